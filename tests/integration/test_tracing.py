"""Issue 14 end to end on real processes: W3C trace context across both hops (consumer VM ->
consumer host -> producer host and back), JSON logs, spans at an OTLP collector, and the registry's
audit lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from leasenet.cluster import LocalCluster
from tests.conftest import eventually_async, tls_as
from tests.integration.helpers import TARGET, dial, start
from wire import rpc
from wire.tls import Identity, Kind
from wire.trace import TRACEPARENT, parse
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

pytestmark = pytest.mark.integration

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def json_logs(cluster: LocalCluster) -> None:
    """Every process started from now on logs JSON lines, per-request lines (DEBUG) included."""
    cluster.env.update(LEASENET_LOG_FORMAT="json", LEASENET_LOG_LEVEL="DEBUG")


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The process's log, each line parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def traced_requests(path: Path, request_id: int) -> set[str]:
    """The trace ids of the log lines written for request `request_id`."""
    return {line["trace_id"] for line in log_lines(path)
            if line.get("request_id") == request_id and "trace_id" in line}


async def send_traced(consumer: str, request_id: int, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    """Send as consumer VM 10.1.0.1; the traceparent the answer's trailing metadata carries."""
    async with dial(consumer, Kind.CONSUMER) as channel:
        call = cpb_grpc.ConsumerHostStub(channel).Send(
            cpb.SendRequest(network="blue", src="10.1.0.1", token="tok-10.1.0.1", target=TARGET, payload=b"hi",
                            request_id=request_id), metadata=metadata, timeout=10)
        resp = await call
        assert resp.payload == b"hi"
        return dict(await call.trailing_metadata())[TRACEPARENT]


async def test_a_callers_trace_id_appears_in_both_hosts_json_logs_and_comes_back_to_it(cluster):
    json_logs(cluster)
    topo = start(cluster)
    answered = await send_traced(topo.consumers[0].address, 41, ((TRACEPARENT, CALLER),))

    assert parse(answered).trace_id == CALLER_TRACE  # type: ignore[union-attr]
    assert parse(answered).span_id != CALLER_SPAN  # type: ignore[union-attr]  # the consumer host's own span
    consumer_log, producer_log = topo.consumers[0].log, topo.producers[0].log
    await eventually_async(lambda: traced_requests(producer_log, 41) == {CALLER_TRACE}, what="the producer's line")
    assert traced_requests(consumer_log, 41) == {CALLER_TRACE}
    # one object per line, with the process named
    first = log_lines(consumer_log)[0]
    assert {"time", "level", "kind", "host", "message"} <= first.keys()
    assert (first["kind"], first["host"]) == ("consumer", "c1")
    assert {(line["kind"], line["host"]) for line in log_lines(producer_log)} == {("producer", "p1")}


async def test_a_request_without_a_traceparent_gets_a_fresh_trace_id_seen_on_both_hosts(cluster):
    json_logs(cluster)
    topo = start(cluster)
    first = parse(await send_traced(topo.consumers[0].address, 51))
    second = parse(await send_traced(topo.consumers[0].address, 52, ((TRACEPARENT, "not-a-traceparent"),)))

    assert first is not None and second is not None
    assert len({first.trace_id, second.trace_id, CALLER_TRACE}) == 3
    for request_id, trace in ((51, first), (52, second)):
        await eventually_async(lambda: traced_requests(topo.producers[0].log, request_id) == {trace.trace_id},
                               what=f"request {request_id} in the producer's log")
        assert traced_requests(topo.consumers[0].log, request_id) == {trace.trace_id}


async def test_a_refused_request_still_tells_the_caller_its_trace(cluster):
    topo = start(cluster)
    async with dial(topo.consumers[0].address, Kind.CONSUMER) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cpb_grpc.ConsumerHostStub(channel).Send(
                cpb.SendRequest(network="blue", src="10.1.0.1", token="wrong", target=TARGET, request_id=71),
                metadata=((TRACEPARENT, CALLER),), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    trailing = dict(refused.value.trailing_metadata() or ())
    assert parse(trailing[TRACEPARENT]).trace_id == CALLER_TRACE  # type: ignore[union-attr]
    assert trailing["leasenet-error"] == "Unauthenticated"


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict[str, str]] = []

    async def Export(self, request: otlp.ExportTraceServiceRequest, context: Any) -> otlp.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
            for scope in resource.scope_spans:
                self.spans += [{"service": service, "name": s.name, "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex()} for s in scope.spans]
        return otlp.ExportTraceServiceResponse()

    def named(self, service: str, name: str) -> list[dict[str, str]]:
        return [s for s in self.spans if (s["service"], s["name"]) == (service, name)]


@pytest.fixture
async def collector() -> Iterator[tuple[Collector, str]]:
    received = Collector()
    server = grpc.aio.server()
    otlp_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield received, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_spans_reach_an_otlp_collector_linked_across_the_hop(cluster, collector):
    received, endpoint = collector
    cluster.env.update(LEASENET_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
    topo = start(cluster)
    answered = parse(await send_traced(topo.consumers[0].address, 61, ((TRACEPARENT, CALLER),)))

    names = [("leasenet-consumer", n) for n in ("request", "admit", "acquire", "exchange")] + \
            [("leasenet-producer", n) for n in ("validate", "execute")]
    await eventually_async(lambda: all(received.named(*n) for n in names), timeout_s=30, what="every span")
    [request] = received.named("leasenet-consumer", "request")
    [exchange] = received.named("leasenet-consumer", "exchange")
    assert {s["trace_id"] for s in received.spans} == {CALLER_TRACE}
    assert request["parent"] == CALLER_SPAN  # the caller's span is the parent of the consumer host's
    assert answered is not None and answered.span_id == request["span_id"]
    for name in ("admit", "acquire", "exchange"):
        assert [s["parent"] for s in received.named("leasenet-consumer", name)] == [request["span_id"]]
    for name in ("validate", "execute"):  # the producer host's spans are children of the exchange
        assert [s["parent"] for s in received.named("leasenet-producer", name)] == [exchange["span_id"]]


async def test_audit_lines_name_the_caller_from_its_certificate_and_the_pool(cluster):
    json_logs(cluster)
    topo = start(cluster, vms=3, max_pool=3)
    me = Identity(Kind.CONSUMER, "c7")
    cluster.start_presence(Kind.CONSUMER, me.id)  # its pools hang on its lease
    async with rpc.channel(topo.registry.address, tls_as(me), Kind.REGISTRY) as channel:
        leasing = rpb_grpc.LeasingStub(channel)
        lease = await leasing.RequestLease(rpb.RequestLeaseRequest(
            service="echo", consumer_network="blue", consumer_vm="10.1.0.9"), timeout=10)
        grown = await leasing.GrowLease(rpb.GrowLeaseRequest(lease_id=lease.lease_id), timeout=10)
        given_back = next(m.vm_id for m in grown.members if m.vm_id not in {m.vm_id for m in lease.members})
        await leasing.ShrinkLease(rpb.ShrinkLeaseRequest(lease_id=lease.lease_id, vm_ids=[given_back]), timeout=10)
        await leasing.RenewLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=10)  # works: no line
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await leasing.RenewLease(rpb.LeaseRef(lease_id="abcdef"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        await leasing.ReleaseLease(rpb.LeaseRef(lease_id=lease.lease_id), timeout=10)

    def mine() -> list[dict[str, Any]]:
        return [line for line in log_lines(topo.registry.log) if line.get("caller") == "consumer/c7"]

    await eventually_async(lambda: len(mine()) == 5, what="five audit lines")
    lines = mine()
    assert [(line["audit"], line["outcome"]) for line in lines] == [
        ("grant", "OK"), ("grow", "OK"), ("shrink", "OK"), ("renew", "NOT_FOUND"), ("release", "OK")]
    assert {line["pool"] for line in lines if line["audit"] != "renew"} == {"echo/blue/10.1.0.9"}
    assert {line["lease_id"] for line in lines} == {lease.lease_id, "abcdef"}
    grant, grow, shrink, renew, _ = lines
    assert grant["vms"] == [m.vm_id for m in lease.members]
    assert sorted(grow["vms"]) == sorted(m.vm_id for m in grown.members)
    assert shrink["vms"] == [given_back]
    assert renew["reason"] and renew["pool"] == ""
    assert all(line["logger"] == "leasenet.audit" and line["level"] == "INFO" for line in lines)
