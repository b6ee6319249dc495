"""Per-host identity down to etcd (issue 22): a stolen host certificate reaches only that host's own
records. Real etcd with client-certificate auth; each host enrolled as `leasenet enrol` does (its
user and its own role); the attacker is a second enrolled host of the same kind (p2 against p1, c2
against c1), holding its own valid certificate."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd3aio import EtcdPermissionDeniedError, prefix_range_end

from leasenet.cluster import write_toml
from leasenet.etcd import EnrolError, decommission, enrol, etcd_client
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, Pool, ProducerVm, VmId
from mapping.liveness import Liveness
from mapping.replica import Replica
from registry.leasing import LeasingAgent
from mapping.store.etcd import EtcdStore
from tests.conftest import eventually_async
from tests.integration.helpers import cluster_toml
from tests.security.conftest import material
from wire.errors import PermissionDenied
from wire.tls import Identity, Kind, TlsFiles

_n = itertools.count(1)


@dataclass
class Victim:
    """p1 and c1 registered as they register themselves: records under their liveness leases."""
    producer: Host
    vm: ProducerVm
    consumer: Host
    producer_lease: int
    consumer_lease: int


async def opened(pki: Path, tls_etcd: list[str], kind: Kind, ident: str) -> EtcdStore:
    return await EtcdStore(tls_etcd, timeout_s=5, tls=material(pki, kind, ident)).connect()


@pytest.fixture
async def stores(pki: Path, tls_etcd: list[str]) -> AsyncIterator[dict[str, EtcdStore]]:
    made = {f"{kind.value}/{i}": await opened(pki, tls_etcd, kind, i)
            for kind, i in [(Kind.PRODUCER, "p1"), (Kind.PRODUCER, "p2"), (Kind.CONSUMER, "c1"),
                            (Kind.CONSUMER, "c2"), (Kind.REGISTRY, "r1")]}
    try:
        yield made
    finally:
        for store in made.values():
            await store.close()


@pytest.fixture
async def victim(stores: dict[str, EtcdStore]) -> AsyncIterator[Victim]:
    p1, c1 = stores["producer/p1"], stores["consumer/c1"]
    n = next(_n)
    host = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101")
    vm = ProducerVm("blue", f"10.1.2.{n}", HostId("p1"), "echo")
    consumer = Host(HostId("c1"), HostKind.CONSUMER, "127.0.0.1:7201")
    producer_lease, consumer_lease = await p1.grant_lease(60), await c1.grant_lease(60)
    assert (await p1.create_all([(keys.key_of(r), keys.encode(r)) for r in (vm, host)], lease=producer_lease)).succeeded
    assert (await c1.create_all([(keys.key_of(consumer), keys.encode(consumer))], lease=consumer_lease)).succeeded
    yield Victim(host, vm, consumer, producer_lease, consumer_lease)
    await p1.revoke_lease(producer_lease)  # its owner may
    await c1.revoke_lease(consumer_lease)


def forged(record: Host | ProducerVm) -> bytes:
    """What an attacker writes: the victim's VM pointed at itself, the victim's host drained."""
    if isinstance(record, ProducerVm):
        return keys.encode(ProducerVm(record.network, record.address, record.host_id, "stolen", "echo"))
    return keys.encode(Host(record.host_id, record.kind, "10.66.6.6:7100", draining=True))


async def range_delete(pki: Path, tls_etcd: list[str], who: Identity, prefix: str) -> None:
    """`etcdctl del --prefix`: a raw range delete, as the attacker's certificate."""
    client = etcd_client(tls_etcd, material(pki, who.kind, who.id))
    await client.connect()
    try:
        assert client.kv is not None
        await client.kv.delete(prefix, prefix_range_end(prefix), timeout=5)
    finally:
        await client.close()


Attack = Callable[[dict[str, EtcdStore], Victim, Path, list[str]], Awaitable[object]]
ATTACKS: dict[str, Attack] = {
    "p2 rewrites p1's host record": lambda s, v, pki, e: s["producer/p2"].put(keys.key_of(v.producer), forged(v.producer)),
    "p2 rewrites p1's VM record": lambda s, v, pki, e: s["producer/p2"].put(keys.key_of(v.vm), forged(v.vm)),
    "p2 deletes p1's VM record": lambda s, v, pki, e: s["producer/p2"].delete(keys.key_of(v.vm)),
    "p2 deletes p1's host record": lambda s, v, pki, e: s["producer/p2"].delete(keys.key_of(v.producer)),
    "p2 deletes every VM (vms/ by prefix)": lambda s, v, pki, e: range_delete(
        pki, e, Identity(Kind.PRODUCER, "p2"), keys.VMS),
    "p2 deletes p1's VMs by prefix": lambda s, v, pki, e: range_delete(
        pki, e, Identity(Kind.PRODUCER, "p2"), keys.VMS + "p1/"),
    "p2 puts a new VM under p1's name": lambda s, v, pki, e: s["producer/p2"].create_all(
        [(keys.key_of(ProducerVm("blue", "10.1.9.9", HostId("p1"), "echo")), forged(v.vm))]),
    "p2 revokes p1's liveness lease": lambda s, v, pki, e: s["producer/p2"].revoke_lease(v.producer_lease),
    "c2 rewrites c1's host record": lambda s, v, pki, e: s["consumer/c2"].put(keys.key_of(v.consumer), forged(v.consumer)),
    "c2 deletes c1's host record": lambda s, v, pki, e: s["consumer/c2"].delete(keys.key_of(v.consumer)),
    "c2 revokes c1's liveness lease": lambda s, v, pki, e: s["consumer/c2"].revoke_lease(v.consumer_lease),
    "c2 registers as a producer host": lambda s, v, pki, e: s["consumer/c2"].put(
        keys.key_of(Host(HostId("c2"), HostKind.PRODUCER, "127.0.0.1:1")), b"{}"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_second_host_of_the_same_kind_cannot_touch_the_first_one_s_records(
        attack: str, stores: dict[str, EtcdStore], victim: Victim, pki: Path, tls_etcd: list[str]) -> None:
    with pytest.raises((PermissionDenied, EtcdPermissionDeniedError)):
        await ATTACKS[attack](stores, victim, pki, tls_etcd)
    registry = stores["registry/r1"]  # reads everything: the victim's records are as they wrote them
    for record in (victim.producer, victim.vm, victim.consumer):
        held = await registry.get(keys.key_of(record))
        assert held is not None and held.value == keys.encode(record), record
    assert await registry.get(keys.key_of(ProducerVm("blue", "10.1.9.9", HostId("p1"), "echo"))) is None


async def test_each_host_reads_its_own_share_and_the_shared_prefixes_only(stores: dict[str, EtcdStore]) -> None:
    """A host reads the config, the host records, its own records and what registries write for it
    (the claims on its VMs, its pools): another host's claims or pools are not its to read."""
    registry = stores["registry/r1"]
    claim = Claim(VmId("blue/10.1.9.1"), LeaseId(5), "echo", VmId("blue/10.1.0.9"), HostId("c1"), 1, host_id=HostId("p1"))
    pool = Pool("echo", VmId("blue/10.1.0.9"), HostId("c1"), LeaseId(5), 3)
    written = [(keys.key_of(claim), keys.encode(claim)), (keys.key_of(pool), keys.encode(pool)),
               (keys.member_key(claim), keys.encode(claim))]
    for key, value in written:
        await registry.put(key, value)
    try:
        for reader, key in [("producer/p1", keys.key_of(claim)), ("consumer/c1", keys.key_of(pool)),
                            ("consumer/c1", keys.member_key(claim)), ("producer/p2", keys.HOSTS),
                            ("consumer/c2", keys.NETWORKS)]:
            await stores[reader].snapshot(key)  # allowed: no error
        for reader, prefix in [("producer/p2", f"{keys.CLAIMS}p1/"), ("producer/p2", keys.CLAIMS),
                               ("consumer/c2", f"{keys.POOLS}c1/"), ("producer/p1", keys.POOLS),
                               ("consumer/c1", keys.CLAIMS), ("consumer/c1", keys.ROOT)]:
            with pytest.raises((PermissionDenied, EtcdPermissionDeniedError)):
                await stores[reader].snapshot(prefix)
    finally:
        await registry.delete_all([key for key, _ in written])


async def test_each_host_keeps_writing_its_own_records(stores: dict[str, EtcdStore]) -> None:
    p2, c2 = stores["producer/p2"], stores["consumer/c2"]
    host, vm = Host(HostId("p2"), HostKind.PRODUCER, "127.0.0.1:7102"), ProducerVm("blue", "10.1.3.1", HostId("p2"), "echo")
    lease = await p2.grant_lease(60)
    assert (await p2.create_all([(keys.key_of(r), keys.encode(r)) for r in (vm, host)], lease=lease)).succeeded
    used = ProducerVm(vm.network, vm.address, vm.host_id, vm.service, used=True)
    assert await p2.put(keys.key_of(used), keys.encode(used), lease=lease) > 0  # the `used` mark
    assert (await p2.delete(keys.key_of(vm))).succeeded  # a withdrawn VM
    await p2.revoke_lease(lease)  # deregistration
    assert await p2.get(keys.key_of(host)) is None
    consumer = Host(HostId("c2"), HostKind.CONSUMER, "127.0.0.1:7202")
    lease = await c2.grant_lease(60)
    assert (await c2.create_all([(keys.key_of(consumer), keys.encode(consumer))], lease=lease)).succeeded
    await c2.revoke_lease(lease)


async def test_a_decommissioned_host_s_certificate_writes_and_reads_nothing(pki: Path, tls_etcd: list[str]) -> None:
    gone = Identity(Kind.PRODUCER, "p9")
    store = await opened(pki, tls_etcd, gone.kind, gone.id)
    try:
        host = Host(HostId("p9"), HostKind.PRODUCER, "127.0.0.1:7109")
        vm = ProducerVm("blue", "10.1.9.1", HostId("p9"), "echo")
        lease = await store.grant_lease(60)
        assert (await store.create_all([(keys.key_of(r), keys.encode(r)) for r in (vm, host)], lease=lease)).succeeded
        assert await decommission(tls_etcd, material(pki, Kind.ETCD, "e1"), gone) == 2  # its records went with it
        with pytest.raises(PermissionDenied):
            await store.put(keys.key_of(host), keys.encode(host))
        with pytest.raises(PermissionDenied):
            await store.create_all([(keys.key_of(vm), keys.encode(vm))])
        with pytest.raises(PermissionDenied):
            await store.get(keys.key_of(host))
    finally:
        await store.close()


def test_a_second_registry_with_an_id_in_use_is_refused_in_one_line(cluster) -> None:
    """Two registries started without --host-id both take `registry`: the second never serves."""
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml())
    first = cluster.spawn("registry-a", "registry", "--cluster-config", str(config), "--listen", "127.0.0.1:0")
    second = cluster.spawn("registry-b", "registry", "--cluster-config", str(config), "--listen", "127.0.0.1:0",
                           wait=False)
    assert second.process is not None
    assert second.process.wait(30) == 1
    lines = second.log.read_text().strip().splitlines()
    assert lines[-1].startswith("leasenet: host id 'registry' is already in use by a live process"), lines[-1:]
    assert "Traceback" not in second.log.read_text()
    assert not second.ready_file.exists()  # it never said it was serving
    assert first.alive


def test_a_host_id_its_certificate_does_not_name_is_refused_in_one_line(pki: Path) -> None:
    """p1's certificate under another host id would fail at its first etcd write: it fails at start."""
    files = TlsFiles.in_dir(pki, Identity(Kind.PRODUCER, "p1"))
    done = subprocess.run([sys.executable, "-m", "leasenet", "producer-host", "--host-id", "p2", "--tls-cert",
                           str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca), "--etcd-endpoints",
                           "https://127.0.0.1:1", "--network", "blue", "--service", "echo", "--vm-address-start",
                           "10.1.1.1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["leasenet: --host-id p2: the certificate given is producer/p1's, which "
                                                "writes the records of producer p1 (and p1.<replica>) only"]


async def test_an_identity_shared_by_replicas_and_an_id_that_would_be_one_of_them_exclude_each_other(
        pki: Path, tls_etcd: list[str]) -> None:
    root = material(pki, Kind.ETCD, "e1")
    await enrol(tls_etcd, root, Identity(Kind.PRODUCER, "fleet"), replicas=True)
    with pytest.raises(EnrolError, match="its id names a replica of leasenet-producer-fleet"):
        await enrol(tls_etcd, root, Identity(Kind.PRODUCER, "fleet.x1"))
    await enrol(tls_etcd, root, Identity(Kind.PRODUCER, "q1.a"))
    with pytest.raises(EnrolError, match="leasenet-producer-q1.a is enrolled and would be one of its replicas"):
        await enrol(tls_etcd, root, Identity(Kind.PRODUCER, "q1"), replicas=True)
    await decommission(tls_etcd, root, Identity(Kind.PRODUCER, "q1.a"))
    await decommission(tls_etcd, root, Identity(Kind.PRODUCER, "fleet"))


async def test_two_hosts_registering_one_address_in_real_etcd_the_first_wins(
        stores: dict[str, EtcdStore], caplog: pytest.LogCaptureFixture) -> None:
    """p2 may write a record of p1's address under its own name; every registry uses p1's (the
    oldest) and says so, and p2's own replica (scoped to its records) never sees p1's."""
    vm = ProducerVm("blue", f"10.1.7.{next(_n)}", HostId("p1"), "echo")
    twin = ProducerVm(vm.network, vm.address, HostId("p2"), "echo")
    first = Liveness(stores["producer/p1"], HostId("p1"), lambda: [Host(HostId("p1"), HostKind.PRODUCER, "a:1"), vm], 5)
    second = Liveness(stores["producer/p2"], HostId("p2"), lambda: [Host(HostId("p2"), HostKind.PRODUCER, "b:1"), twin], 5)
    replica = Replica(stores["registry/r1"])
    LeasingAgent(stores["registry/r1"], replica)
    task = asyncio.create_task(replica.run())
    try:
        await replica.synced.wait()
        await first.register()
        await second.register()
        await eventually_async(lambda: f"host p2 registered VM {vm.vm_id} too: host p1 registered that address first"
                               in caplog.text, 10, what="the registry's line")
        assert replica.state.vms[vm.vm_id].host_id == "p1"
        assert await stores["registry/r1"].get(keys.key_of(twin)) is not None  # p2's stays, never in force
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.deregister()
        await second.deregister()
