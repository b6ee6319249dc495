"""Every RESOURCE_EXHAUSTED answer is counted once, by its reason, where the error becomes the
answer (wire.rpc.edge_counting for a call, the consumer host's per-request answers on a stream),
however deep it was raised; other refusals are not counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from consumer_host.config import Limits
from consumer_host.datapath import Attachment
from consumer_host.service import ConsumerConfig, ConsumerHostServicer, RequestPath
from consumer_host.tokens import PlainToken
from mapping import keys
from mapping.model import HostId, LeasePolicy, Network, Service
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from wire import metrics
from wire.errors import NotFound, Overloaded, PoolExhausted, Status
from wire.rpc import edge_counting
from wire.v1 import consumer_pb2 as pb

VM = Attachment("blue", "10.1.0.1", PlainToken("secret"))


def exhausted(kind: str, reason: str) -> float:
    return REGISTRY.get_sample_value("leasenet_resource_exhausted_total", {"kind": kind, "reason": reason}) or 0.0


class FakeContext:
    """What the servicers ask of a grpc.aio context; abort records the status and raises as gRPC's does."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None

    def peer(self) -> str:
        return "ipv4:10.9.9.9:41234"

    def time_remaining(self) -> float:
        return 5.0

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def trailing_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: object = ()) -> None:
        self.code = code
        raise grpc.aio.AbortError()


class Refuser:
    @edge_counting("unit_edge")
    async def Call(self, request: Exception, context: FakeContext) -> None:
        raise request


@pytest.mark.parametrize("error, counted", [
    (Overloaded("full", reason="unit_queue"), {"unit_queue": 1}),
    (PoolExhausted("none left"), {"pool_exhausted": 1}),  # no reason given: its type's
    (NotFound("nothing here"), {}),
])
async def test_the_edge_counts_a_resource_exhausted_answer_once_by_its_reason_and_nothing_else(
        error: Exception, counted: dict[str, int]) -> None:
    reasons = ("unit_queue", "pool_exhausted")
    before = {r: exhausted("unit_edge", r) for r in reasons}
    context = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await Refuser().Call(error, context)
    assert context.code is not None and context.code.name == error.code.name  # type: ignore[attr-defined]
    assert {r: exhausted("unit_edge", r) - before[r] for r in reasons} == {r: counted.get(r, 0) for r in reasons}


async def test_a_throttled_source_is_counted_once_per_refusal_on_send_attach_and_each_stream_request() -> None:
    store = MemoryStore()
    for record in (Network("blue", 100), Service("echo", "blue", "10.1.255.1", 7, LeasePolicy())):
        await store.put(keys.key_of(record), keys.encode(record))
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    try:
        await replica.synced.wait()
        config = ConsumerConfig(HostId("c1"), "127.0.0.1:0", "127.0.0.1:7200", [], {VM.vm_id: VM},
                                limits=Limits(bad_tokens=1, bad_token_block_s=60))
        # a throttled source is refused at admission: neither pools nor tunnels are reached
        servicer = ConsumerHostServicer(RequestPath(config, replica, None, None))  # type: ignore[arg-type]
        guess = pb.SendRequest(network="blue", src="10.1.0.1", token="guess", target="10.1.255.1:7", request_id=1)
        before = exhausted("consumer_host", "bad_tokens")

        codes = []
        for call, request in ((servicer.Send, guess), (servicer.Send, guess),
                              (servicer.Attach, pb.AttachRequest(network="blue", address="10.1.0.1", token="x"))):
            context = FakeContext()
            with pytest.raises(grpc.aio.AbortError):
                await call(request, context)  # type: ignore[operator]
            codes.append(context.code)

        async def stream() -> AsyncIterator[pb.SendRequest]:
            for i in range(3):
                yield pb.SendRequest(network="blue", src="10.1.0.1", token="secret", target="10.1.255.1:7",
                                     request_id=10 + i)
        answers = [Status.of(r.status_code) async for r in servicer.SendStream(stream(), FakeContext())]

        assert codes == [grpc.StatusCode.UNAUTHENTICATED] + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
        assert answers == [Status.RESOURCE_EXHAUSTED] * 3
        seen = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) + answers.count(Status.RESOURCE_EXHAUSTED)
        assert exhausted("consumer_host", "bad_tokens") - before == seen == 5
    finally:
        task.cancel()


def test_an_error_without_a_reason_of_its_own_is_counted_under_its_types_reason() -> None:
    before = exhausted("unit_kind", "overloaded")
    metrics.answered("unit_kind", Overloaded("full"))
    metrics.answered("unit_kind", NotFound("no"))
    assert exhausted("unit_kind", "overloaded") - before == 1
