"""Issue 14: every process kind serves /metrics, and after known traffic each metric of METRICS.md
reads what was sent: requests by service and status, pool gauges, leasing, tunnel frames,
refused frames, etcd requests, the replica, keep-alives and live hosts. Label values stay bounded."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest

from leasenet.cluster import ConsumerVm, LocalCluster, consumer_toml, write_toml
from tests.conftest import eventually
from tests.integration.helpers import cluster_toml, dial, leases, send, send_status
from wire import metrics
from wire.metrics import Scraped, scrape
from wire.tls import Identity, Kind
from wire.v1 import tunnel_pb2 as tpb
from wire.v1 import tunnel_pb2_grpc as tpb_grpc

pytestmark = pytest.mark.integration

BLUE_VMS = ["10.1.0.1", "10.1.0.2"]
RED_VM = "10.2.0.1"  # network red's service has no producer VM: its lease is refused
PER_VM = 15
IPV4 = re.compile(r"\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b")

def value(samples: Scraped, name: str, **labels: str) -> float:
    """The one sample of `name` with exactly these label values (among others); fails if absent."""
    found = [v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {samples.get(name)}"
    return found[0]


def total(samples: list[Scraped], name: str, **labels: str) -> float:
    return sum(metrics.total(s, name, **labels) for s in samples)


async def misaddressed_frame(producer: str) -> tpb.Frame:
    """A consumer host's frame addressed to another host: refused at validation (InvalidRequest)."""
    async with dial(producer, Kind.PRODUCER, Identity(Kind.CONSUMER, "c9")) as channel:
        call = tpb_grpc.TunnelStub(channel).Exchange(timeout=5)
        frame = tpb.Frame(id=1, outer=tpb.OuterHeader(vni=100, src_host="127.0.0.1:1", dst_host="127.0.0.1:2"),
                          inner=tpb.InnerHeader(network="blue", src="10.1.0.9", dst="10.1.1.1", request_id=9))
        await call.write(tpb.FrameBatch(frames=[frame]))
        batch = await call.read()
        await call.done_writing()
        return batch.frames[0]


def test_every_process_kind_serves_metrics_that_match_the_traffic_sent(cluster: LocalCluster) -> None:
    cluster.metrics = True
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml(min_pool=1, max_pool=2))
    registry = cluster.registry("registry1", config)
    producers = [cluster.producer(f"p{i}", network="blue", service="echo", vms=2, vm_address_start=f"10.1.{i}.1")
                 for i in (1, 2)]
    attachments = [ConsumerVm("blue", a, f"tok-{a}") for a in BLUE_VMS] + [ConsumerVm("red", RED_VM, f"tok-{RED_VM}")]
    consumer = cluster.consumer("c1", config=write_toml(cluster.workdir / "c1.toml", consumer_toml(attachments)),
                                registries=[registry.address])

    async def traffic() -> int:
        async def one_vm(src: str) -> int:
            ok = 0
            for i in range(PER_VM):
                resp = await send(consumer.address, src, f"ping {i}".encode(), request_id=1000 + i)
                ok += resp.payload == f"ping {i}".encode()
            return ok

        ok = sum(await asyncio.gather(*(one_vm(src) for src in BLUE_VMS)))
        code, _ = await send_status(consumer.address, BLUE_VMS[0], token="wrong")
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = await send_status(consumer.address, RED_VM, network="red", target="10.2.255.1:7")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        answer = await misaddressed_frame(producers[0].address)
        assert answer.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        return ok

    ok = asyncio.run(traffic())
    assert ok == PER_VM * len(BLUE_VMS)
    held = asyncio.run(leases(registry.address))
    unbounded = {lease.lease_id for lease in held} | {str(1000 + i) for i in range(PER_VM)}
    c, r = scrape(consumer.metrics), scrape(registry.metrics)
    ps = [scrape(p.metrics) for p in producers]

    # requests by service and code, end to end at the consumer host and executed at the producers
    assert value(c, "leasenet_requests_total", kind="consumer_host", service="echo", code="OK") == ok
    assert value(c, "leasenet_request_duration_seconds_count", kind="consumer_host", service="echo") == ok
    assert value(c, "leasenet_requests_total", kind="consumer_host", service="unknown", code="UNAUTHENTICATED") == 1
    assert value(c, "leasenet_requests_total", kind="consumer_host", service="red-echo",
                 code="RESOURCE_EXHAUSTED") == 1
    assert total(ps, "leasenet_requests_total", kind="producer_host", service="echo", code="OK") == ok
    assert total(ps, "leasenet_request_duration_seconds_count", kind="producer_host", service="echo") == ok

    # RESOURCE_EXHAUSTED on both sides of the refused lease, and the leasing agent's counts
    assert value(c, "leasenet_resource_exhausted_total", kind="consumer_host", reason="lease_refused") == 1
    refused = value(r, "leasenet_lease_operations_total", op="grant", result="refused")
    assert refused >= 1
    assert value(r, "leasenet_resource_exhausted_total", kind="registry", reason="no_free_vms") == refused
    assert value(r, "leasenet_lease_operations_total", op="grant", result="ok") == len(BLUE_VMS)
    assert value(r, "leasenet_grant_duration_seconds_count") == len(BLUE_VMS)
    assert value(r, "leasenet_grant_conflicts_total") == 0
    grown = sum(v for labels, v in r["leasenet_lease_operations_total"] if labels["op"] == "grow"
                and labels["result"] == "ok")
    # one txn per grant or grow, one for the registry's own record (hosts/registry/<id>, for sharding)
    # and one for the key schema's marker (mapping/schema.py: written only where none exists)
    assert value(r, "leasenet_etcd_requests_total", op="txn") == len(BLUE_VMS) + grown + 2

    # pools as the registry sees them; nothing in use or waiting once the traffic is answered
    assert value(c, "leasenet_pool_vms", service="echo") == sum(len(lease.members) for lease in held
                                                               if lease.service == "echo")
    assert value(c, "leasenet_pool_vms_in_use", service="echo") == 0
    assert value(c, "leasenet_pool_waiters", service="echo") == 0

    # tunnel frames: every OK request one frame each way; the misaddressed frame refused at p1
    assert value(c, "leasenet_tunnel_frames_total", direction="out") == ok
    assert value(c, "leasenet_tunnel_frames_total", direction="in") == ok
    assert total(ps, "leasenet_tunnel_frames_total", direction="in") == ok + 1
    assert total(ps, "leasenet_tunnel_frames_total", direction="out") == ok + 1
    assert value(ps[0], "leasenet_tunnel_frames_rejected_total", reason="InvalidRequest") == 1
    streams = value(c, "leasenet_tunnel_streams")
    assert 1 <= streams <= len(producers)
    assert total(ps, "leasenet_tunnel_streams") == streams

    # the registry's view of liveness
    assert value(r, "leasenet_live_hosts", kind="producer") == len(producers)
    assert value(r, "leasenet_live_hosts", kind="consumer") == 1

    for kind, s in (("consumer_host", c), ("registry", r), ("producer_host", ps[0]), ("producer_host", ps[1])):
        info = [labels for labels, v in s["leasenet_build_info"] if v == 1]
        assert [(i["kind"], i["version"]) for i in info] == [(kind, "0.1.0")], kind
        assert info[0]["event_loop"].startswith(("uvloop", "asyncio")), info
        # etcd: one snapshot and one watch per watched prefix at start (mapping/scopes.py: a registry
        # watches the whole root, a consumer host 4 prefixes, a producer host 5), every request timed, none failed
        prefixes = {"registry": 1, "consumer_host": 4, "producer_host": 5}[kind]
        assert value(s, "leasenet_etcd_requests_total", op="range") == prefixes, kind
        assert value(s, "leasenet_etcd_requests_total", op="watch") == prefixes, kind
        for labels, n in s["leasenet_etcd_requests_total"]:
            if labels["op"] != "watch":
                assert value(s, "leasenet_etcd_request_duration_seconds_count", **labels) == n, (kind, labels)
            assert value(s, "leasenet_etcd_errors_total", **labels) == 0, (kind, labels)
        assert value(s, "leasenet_replica_reloads_total") == prefixes, kind  # one snapshot per watched prefix
        assert value(s, "leasenet_keepalive_failures_total") == 0, kind
        # bounded labels: no VM or host address, lease id or request id anywhere
        values = {v for samples in s.values() for labels, _ in samples for v in labels.values()}
        assert not [v for v in values if IPV4.search(v) or v in unbounded], (kind, values)

    eventually(lambda: all(value(scrape(p.metrics), "leasenet_replica_revision_lag") == 0
                           for p in [registry, consumer, *producers]), what="every replica caught up")
