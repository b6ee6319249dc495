"""The attacker suite (SPEC §10): a whole cluster as real processes on loopback with mutual TLS and
etcd auth, legitimate traffic from `leasenet traffic` flowing, and an attacker holding perfectly
valid certificates of the cluster's CA trying each attack of ARCHITECTURE.md's threat model. Each
is refused with its own status; the traffic's histories then pass the checker: nothing lost, no
producer VM shared, no overlapping execution, and no forged frame ever ran."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import grpc.aio
import pytest

from leasenet import checker
from leasenet.cluster import ConsumerVm, consumer_toml, write_toml
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, Pool
from mapping.store.etcd import EtcdStore
from tests.chaos.harness import ClaimRecorder, OutcomeCounter
from tests.conftest import eventually_async, tls_as
from tests.integration.helpers import TARGET, Topology, dial, history, leases, start
from wire.errors import PermissionDenied
from wire.tls import Identity, Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

C1, C2 = Identity(Kind.CONSUMER, "c1"), Identity(Kind.CONSUMER, "c2")
P2, REGISTRY = Identity(Kind.PRODUCER, "p2"), Identity(Kind.REGISTRY, "registry1")
CONSUMER_VMS = [["10.1.0.1", "10.1.0.2"], ["10.1.0.3", "10.1.0.4"]]  # of c1, of c2
REQUESTS = 2_000
FORGED_ID = 0x7E57  # the request id of every forged frame: no execution may carry it


async def leasing(who: Identity, registry: str, method: str, request: object) -> tuple[grpc.StatusCode, str]:
    async with dial(registry, Kind.REGISTRY, who) as channel:
        try:
            await getattr(rpb_grpc.LeasingStub(channel), method)(request, timeout=5)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""


async def tunnel(who: Identity, producer: str, frame: tpb.Frame) -> tpb.Frame | tuple[grpc.StatusCode, str]:
    """One frame sent as `who`: the answer frame, or how the stream ended when it was refused whole."""
    async with dial(producer, Kind.PRODUCER, who) as channel:
        call = tpb_grpc.TunnelStub(channel).Exchange(timeout=5)
        try:
            await call.write(tpb.FrameBatch(frames=[frame]))
            batch = await call.read()
            if batch is not grpc.aio.EOF:
                await call.done_writing()
                return batch.frames[0]
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # refused before or while we wrote
        return await call.code(), await call.details()


def forged(lease: rpb.Lease, member: rpb.PoolMember) -> tpb.Frame:
    """Everything c1's own frame would carry (the VNI, the fencing token, c1's address as src_host)."""
    return tpb.Frame(id=1, outer=tpb.OuterHeader(vni=100, src_host="127.0.0.1:1", dst_host=member.host_address,
                                                 fencing_token=member.fencing_token),
                     inner=tpb.InnerHeader(network=lease.consumer_network, src=lease.consumer_vm, dst=member.address,
                                           dst_port=7, request_id=FORGED_ID),
                     payload=b"forged")


def start_traffic(topo: Topology, workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    cluster = topo.cluster
    vms = [ConsumerVm("blue", a, f"tok-{a}", c.address) for c, addresses in zip(topo.consumers, CONSUMER_VMS)
           for a in addresses]
    config = write_toml(workdir / "traffic.toml",
                        consumer_toml(vms, target=TARGET, timeout_s=5.0, idempotent_share=0.5, rate=150))
    requests = workdir / "requests.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "leasenet", "traffic", "--consumer-host", ",".join(c.address for c in topo.consumers),
         "--config", str(config), "--requests", str(REQUESTS), "--concurrency", "8", "--history", str(requests),
         "--json", *cluster.tls_args()],
        stdout=subprocess.PIPE, stderr=open(workdir / "traffic.log", "wb"), env=cluster.process_env(),
        start_new_session=True)
    return process, requests


async def etcd_as(topo: Topology, who: Identity) -> EtcdStore:
    return await EtcdStore(topo.cluster.etcd_endpoints, timeout_s=5, tls=tls_as(who)).connect()


async def attack_the_tunnel(topo: Topology, lease: rpb.Lease) -> None:
    member = lease.members[0]
    answer = await tunnel(C2, member.host_address, forged(lease, member))
    assert isinstance(answer, tpb.Frame), answer
    assert (answer.status_code, answer.delivered) == (grpc.StatusCode.PERMISSION_DENIED.value[0], False), answer
    assert "another consumer host's pool, not to consumer/c2" in answer.status_message
    for who in (P2, REGISTRY):
        code, details = await tunnel(who, member.host_address, forged(lease, member))  # type: ignore[misc]
        assert code == grpc.StatusCode.PERMISSION_DENIED, (who, details)
        assert f"only consumer hosts send tunnel frames; this stream's peer is {who}" in details


async def attack_the_leasing_api(topo: Topology, lease: rpb.Lease, liveness_lease: int) -> None:
    registry = topo.registry.address
    code, details = await leasing(C2, registry, "RequestLease", rpb.RequestLeaseRequest(
        service="echo", consumer_network="blue", consumer_vm="10.1.0.9", consumer_host="c1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "cannot lease for consumer host 'c1'" in details
    member = lease.members[0]
    for method, request in [("GrowLease", rpb.GrowLeaseRequest(lease_id=lease.lease_id)),
                            ("ShrinkLease", rpb.ShrinkLeaseRequest(lease_id=lease.lease_id, vm_ids=[member.vm_id])),
                            ("RenewLease", rpb.LeaseRef(lease_id=lease.lease_id)),
                            ("ReleaseLease", rpb.LeaseRef(lease_id=lease.lease_id))]:
        code, details = await leasing(C2, registry, method, request)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, details)
        assert "is a pool of another consumer host" in details, (method, details)
    for method in ("RenewLease", "ReleaseLease"):
        code, details = await leasing(C2, registry, method, rpb.LeaseRef(lease_id=format(liveness_lease, "x")))
        assert code == grpc.StatusCode.NOT_FOUND and "not the lease of any pool" in details, (method, details)


async def attack_etcd(topo: Topology, lease: rpb.Lease) -> None:
    """Writes outside each kind's role; revoking a lease one does not own every key of (the pool's
    consumer host's liveness lease, which carries its pools)."""
    pool_id = int(lease.lease_id, 16)
    claim = Claim(lease.members[0].vm_id, LeaseId(pool_id), "echo", "blue/10.1.0.3", HostId("c2"), 1,  # type: ignore[arg-type]
                  host_id=HostId(lease.members[0].host_id))
    pool = Pool("echo", "blue/10.1.0.3", HostId("c2"), LeaseId(pool_id), 5)  # type: ignore[arg-type]
    fake_host = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:1")
    for who, writes in [(C2, [claim, pool, fake_host]), (P2, [claim, pool])]:
        store = await etcd_as(topo, who)
        try:
            for record in writes:
                with pytest.raises(PermissionDenied):
                    await store.put(keys.key_of(record), keys.encode(record))
            with pytest.raises(PermissionDenied):
                await store.delete(keys.key_of(claim))
            held = await store.get(keys.host_key(HostKind.CONSUMER, lease.consumer_host))  # every role reads
            assert held is not None
            owner = keys.decode(held.key, held.value)
            assert isinstance(owner, Host) and owner.lease
            with pytest.raises(PermissionDenied):
                await store.revoke_lease(owner.lease)
        finally:
            await store.close()


async def test_every_attack_is_refused_with_its_own_status_while_traffic_flows(cluster) -> None:
    topo = start(cluster, producers=2, vms=4, consumers=CONSUMER_VMS, max_pool=2, ttl=5)
    workdir = Path(cluster.workdir)
    claims_path = workdir / "claims.jsonl"
    claims_stream = open(claims_path, "a", encoding="utf-8")
    synced = asyncio.Event()
    recorder = asyncio.create_task(ClaimRecorder(cluster, claims_stream).run(synced))
    await asyncio.wait_for(synced.wait(), 20)
    traffic, requests_path = start_traffic(topo, workdir)
    try:
        counter = OutcomeCounter(requests_path)
        await eventually_async(lambda: counter.poll() >= REQUESTS // 5, timeout_s=60, what="traffic under way")
        [lease, *_] = await eventually_async(lambda: leases(topo.registry.address, consumer_host="c1"),
                                             what="a lease of consumer host c1")
        root = await cluster.open_store()
        try:
            p1 = await root.get(keys.key_of(Host(HostId("p1"), HostKind.PRODUCER, "")))
        finally:
            await root.close()
        assert p1 is not None and p1.lease

        await attack_the_tunnel(topo, lease)
        await attack_the_leasing_api(topo, lease, p1.lease)
        await attack_etcd(topo, lease)
        assert counter.poll() < REQUESTS, "the traffic ended before the attacks did: raise REQUESTS"

        # nothing the attacker did changed c1's lease
        [after] = await leases(topo.registry.address, consumer_host="c1", consumer_vm=lease.consumer_vm)
        assert after.lease_id == lease.lease_id
        out, _ = await asyncio.to_thread(traffic.communicate, timeout=120)
    finally:
        if traffic.poll() is None:
            traffic.kill()
            traffic.wait(10)
        recorder.cancel()
        await asyncio.gather(recorder, return_exceptions=True)
        claims_stream.close()

    summary = json.loads(out)
    recorded = checker.load([requests_path], history(cluster), [claims_path])
    report = checker.check(recorded)
    assert report.requests == REQUESTS and report.lost == 0, summary
    assert report.violations == [], report.violations  # no VM shared, no overlapping execution, none lost
    assert report.ok == REQUESTS, report.errors_by_code  # the legitimate traffic never noticed
    assert not [e for e in recorded.executions if e.request_id == FORGED_ID]
