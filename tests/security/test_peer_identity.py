"""Who is calling, from the TLS session only: a real grpc.aio server with mutual TLS reads the
caller's kind and id from its certificate, and refuses strangers before any handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from leasenet.etcd import free_port
from tests.security.conftest import material
from wire.tls import Kind, channel_credentials, channel_options, peer_identity, server_credentials

METHOD = "/leasenet.test.Who/Me"


async def _who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    identity = peer_identity(context)
    return str(identity).encode() if identity else b"nobody"


def _handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("leasenet.test.Who", {"Me": grpc.unary_unary_rpc_method_handler(_who)})


@pytest.fixture
async def mtls_server(pki: Path) -> AsyncIterator[str]:
    """A registry-kind server requiring client certificates from the cluster CA."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handler()])
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, server_credentials(material(pki, Kind.REGISTRY, "r1")))
    await server.start()
    try:
        yield address
    finally:
        await server.stop(None)


async def _call(address: str, credentials: grpc.ChannelCredentials | None,
                options: list[tuple[str, str]] | None = None) -> bytes:
    channel = (grpc.aio.secure_channel(address, credentials, options=options) if credentials
               else grpc.aio.insecure_channel(address))
    async with channel:
        return await channel.unary_unary(METHOD)(b"", timeout=5)



async def test_the_server_reads_the_caller_s_kind_and_id_from_its_certificate(pki: Path, mtls_server: str) -> None:
    for kind, ident in [(Kind.PRODUCER, "p1"), (Kind.CONSUMER, "c1"), (Kind.OPERATOR, "admin")]:
        answer = await _call(mtls_server, channel_credentials(material(pki, kind, ident)), channel_options(Kind.REGISTRY))
        assert answer == f"{kind.value}/{ident}".encode()


async def test_a_caller_with_a_certificate_from_another_ca_is_refused(foreign_pki: Path, mtls_server: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(mtls_server, channel_credentials(material(foreign_pki, Kind.PRODUCER, "p1")), channel_options(Kind.REGISTRY))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_caller_without_a_certificate_is_refused(pki: Path, mtls_server: str) -> None:
    no_cert = grpc.ssl_channel_credentials(root_certificates=material(pki, Kind.PRODUCER, "p1").ca)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(mtls_server, no_cert, channel_options(Kind.REGISTRY))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_caller_cannot_reach_a_tls_server(mtls_server: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(mtls_server, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_expecting_another_kind_of_server_refuses_this_one(pki: Path, mtls_server: str) -> None:
    """Server names are kinds: a producer-host client will not talk to a registry at that address."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(mtls_server, channel_credentials(material(pki, Kind.CONSUMER, "c1")), channel_options(Kind.PRODUCER))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_connection_has_no_peer_identity() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handler()])
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        assert await _call(address, None) == b"nobody"
    finally:
        await server.stop(None)
