"""etcd over mutual TLS with auth: only our CA's certificates get in, and each kind of process may
write exactly the key prefixes it owns (mapping.keys.WRITE_PREFIXES: registries; hosts write no
prefix as a kind, only their own records: test_host_identity.py), nothing else."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from leasenet.etcd import bootstrap_auth
from mapping import keys
from mapping.model import Host, HostId, HostKind
from mapping.store.etcd import EtcdStore
from tests.security.conftest import material
from wire.errors import PermissionDenied, StoreUnavailable
from wire.tls import Kind, TlsConfigError

_probe = itertools.count()
ALL_PREFIXES = sorted({p for prefixes in keys.WRITE_PREFIXES.values() for p in prefixes})
IDS = {Kind.REGISTRY: "r1", Kind.PRODUCER: "p1", Kind.CONSUMER: "c1", Kind.OPERATOR: "admin", Kind.ETCD: "e1"}



@pytest.fixture
async def stores(pki: Path, tls_etcd: list[str]) -> AsyncIterator[dict[Kind, EtcdStore]]:
    """One store per kind, each presenting that kind's certificate."""
    opened = {kind: await EtcdStore(tls_etcd, timeout_s=5, tls=material(pki, kind, ident)).connect()
              for kind, ident in IDS.items()}
    try:
        yield opened
    finally:
        for store in opened.values():
            await store.close()


async def test_an_https_endpoint_without_credentials_is_refused_before_dialling(tls_etcd: list[str]) -> None:
    with pytest.raises(TlsConfigError, match="needs TLS credentials"):
        EtcdStore(tls_etcd)


async def test_a_client_without_a_certificate_cannot_reach_the_tls_etcd(tls_etcd: list[str]) -> None:
    plain = await EtcdStore([e.removeprefix("https://") for e in tls_etcd], timeout_s=2).connect()
    try:
        with pytest.raises(StoreUnavailable):
            await plain.get(keys.ROOT + "anything")
    finally:
        await plain.close()


async def test_a_certificate_from_another_ca_cannot_reach_the_tls_etcd(foreign_pki: Path, tls_etcd: list[str]) -> None:
    stranger = await EtcdStore(tls_etcd, timeout_s=2, tls=material(foreign_pki, Kind.REGISTRY, "r1")).connect()
    try:
        with pytest.raises(StoreUnavailable):
            await stranger.get(keys.ROOT + "anything")
    finally:
        await stranger.close()


@pytest.mark.parametrize("kind", [Kind.REGISTRY, Kind.PRODUCER, Kind.CONSUMER, Kind.OPERATOR])
async def test_each_kind_writes_its_own_prefixes_and_is_refused_elsewhere(
        stores: dict[Kind, EtcdStore], kind: Kind) -> None:
    store = stores[kind]
    for prefix in ALL_PREFIXES:
        key = f"{prefix}probe-{kind.value}-{next(_probe)}"
        if prefix in keys.WRITE_PREFIXES[kind.value]:
            assert await store.put(key, b"{}") > 0
            assert (await store.delete(key)).succeeded
        else:
            with pytest.raises(PermissionDenied, match="may not write there"):
                await store.put(key, b"{}")
            with pytest.raises(PermissionDenied):
                await store.create_all([(key, b"{}")])


async def test_registries_and_operators_read_the_whole_keyspace_hosts_the_shared_prefixes(
        stores: dict[Kind, EtcdStore]) -> None:
    key = f"{keys.CLAIMS}read-{next(_probe)}"
    await stores[Kind.REGISTRY].put(key, b"{}")
    for kind in (Kind.REGISTRY, Kind.OPERATOR):
        assert key in [kv.key for kv in (await stores[kind].snapshot(keys.ROOT)).items]
    shared = f"{keys.REGISTRIES}read-{next(_probe)}"  # under hosts/, which every host reads
    await stores[Kind.REGISTRY].put(shared, b"{}")
    for kind in (Kind.PRODUCER, Kind.CONSUMER):
        assert shared in [kv.key for kv in (await stores[kind].snapshot(keys.HOSTS)).items]
        with pytest.raises(PermissionDenied):  # their own share comes with their own role (enrol)
            await stores[kind].snapshot(keys.ROOT)


async def test_a_registry_cannot_revoke_a_producer_host_s_liveness_lease(stores: dict[Kind, EtcdStore]) -> None:
    producer, registry = stores[Kind.PRODUCER], stores[Kind.REGISTRY]
    host = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100")  # the key p1's own role writes
    lease = await producer.grant_lease(30)
    assert (await producer.create_all([(keys.key_of(host), keys.encode(host))], lease=lease)).succeeded
    with pytest.raises(PermissionDenied):
        await registry.revoke_lease(lease)
    assert await registry.get(keys.key_of(host)) is not None
    await producer.revoke_lease(lease)  # its owner may
    assert await registry.get(keys.key_of(host)) is None


async def test_a_registry_grants_and_revokes_a_pool_s_lease_with_its_claims(stores: dict[Kind, EtcdStore]) -> None:
    registry = stores[Kind.REGISTRY]
    n = next(_probe)
    items = [(f"{keys.POOLS}echo/blue/10.1.0.{n}", b"{}"), (f"{keys.CLAIMS}blue/10.1.1.{n}", b"{}")]
    lease = await registry.grant_lease(30)
    assert (await registry.create_all(items, lease=lease)).succeeded
    with pytest.raises(PermissionDenied):
        await stores[Kind.CONSUMER].revoke_lease(lease)
    await registry.revoke_lease(lease)
    assert [await registry.get(k) for k, _ in items] == [None, None]


async def test_the_bootstrap_runs_once_and_reports_auth_already_on(pki: Path, tls_etcd: list[str]) -> None:
    assert not await bootstrap_auth(tls_etcd, material(pki, Kind.ETCD, "e1"))
