"""Consumer-host tenancy (issue 11, SPEC §10) with real processes over mutual TLS: attach tokens
stored hashed and throttled when guessed, every queue bounded with RESOURCE_EXHAUSTED while other
consumer VMs keep being served, each refusal counted once in leasenet_resource_exhausted_total by
its reason, and no sentence a consumer VM hears names a producer host, a producer VM, a leasing
agent or an internal exception."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from leasenet.cluster import LocalCluster, Proc, consumer_toml, write_toml
from tests.integration.helpers import TARGET, attached, cluster_toml, dial, memory_of, send, send_status
from wire.errors import Status
from wire.metrics import scrape, total
from wire.tls import Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PRODUCER = "prodhost-alpha"  # a distinctive id: no sentence to a consumer VM may contain it
PRODUCER_VMS = "10.1.1."  # the producer VMs' addresses start so (consumer VMs are 10.1.0.x)
EXCEPTION_WORDS = ("Error(", "Exception", "Traceback", "AioRpcError", "KeyError")
FLOOD = 10_000  # hostile messages on one SendStream (issue 11: memory stays bounded, the host keeps serving)


def start(cluster: LocalCluster, *, vms: int, handler: str, consumers: dict[str, tuple[list[str], tuple[str, ...]]],
          max_pool: int = 2) -> tuple[Proc, Proc, dict[str, Proc]]:
    cluster.metrics = True  # every process serves /metrics: refusals are counted as they are seen
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml(max_pool=max_pool))
    registry = cluster.registry("registry1", config)
    producer = cluster.producer(PRODUCER, network="blue", service="echo", vms=vms, vm_address_start="10.1.1.1",
                                handler=handler.split(" ")[0],
                                extra=tuple(x for o in handler.split(" ")[1:] for x in ("--handler-option", o)))
    hosts = {name: cluster.consumer(name, config=write_toml(cluster.workdir / f"{name}.toml",
                                                            consumer_toml(attached(addresses))),
                                    registries=[registry.address], extra=flags)
             for name, (addresses, flags) in consumers.items()}
    return registry, producer, hosts


def assert_no_internal_names(sentences: list[str], *internal: str) -> None:
    words = (PRODUCER, PRODUCER_VMS, *internal, *EXCEPTION_WORDS)
    leaks = [(s, w) for s in sentences for w in words if w and w in s]
    assert not leaks, leaks


def names(outcomes: list[tuple[grpc.StatusCode, str]]) -> dict[str, int]:
    return dict(collections.Counter(code.name for code, _ in outcomes))


def exhausted(proc: Proc, reason: str | None = None) -> float:
    """The consumer host's RESOURCE_EXHAUSTED count for `reason`, or over every reason."""
    labels = {"kind": "consumer_host", **({"reason": reason} if reason else {})}
    return total(scrape(proc.metrics), "leasenet_resource_exhausted_total", **labels)


async def test_hashed_tokens_work_and_a_guessed_token_is_refused_then_throttled_while_the_real_vm_loses_nothing(
        cluster):
    registry, producer, hosts = start(cluster, vms=4, handler="echo", consumers={
        "c1": (["10.1.0.1", "10.1.0.2", "10.1.0.3"], ("--max-bad-tokens", "3", "--bad-token-block", "120"))})
    consumer = hosts["c1"].address
    config = (cluster.workdir / "c1.toml").read_text()
    assert config.count("token_hash = \"scrypt$") == 3 and "tok-10.1.0.1" not in config  # stored hashed
    assert (await send(consumer, "10.1.0.1", b"hello")).payload == b"hello"  # the hash verifies end to end
    assert (await send(consumer, "10.1.0.3", b"hi")).payload == b"hi"
    async with dial(consumer, Kind.CONSUMER) as channel:  # 10.1.0.3 gives its pool back: verified, no pool
        await cpb_grpc.ConsumerHostStub(channel).Detach(
            cpb.DetachRequest(network="blue", address="10.1.0.3", token="tok-10.1.0.3"), timeout=10)

    async def real_vm() -> collections.Counter[grpc.StatusCode]:
        outcomes: collections.Counter[grpc.StatusCode] = collections.Counter()
        for i in range(150):
            outcomes[(await send_status(consumer, "10.1.0.1", b"real-%d" % i, timeout=10))[0]] += 1
        return outcomes

    async def guesser() -> list[tuple[grpc.StatusCode, str]]:
        return [await send_status(consumer, "10.1.0.1", token=f"guess-{i}", timeout=10) for i in range(12)]

    real, guesses = await asyncio.gather(real_vm(), guesser())
    print(f"\nthe real VM: {dict(real)}; the guesser: {names(guesses)}")
    assert real == {grpc.StatusCode.OK: 150}  # 0 lost: a verified token is never throttled
    codes = [c for c, _ in guesses]
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert set(codes[3:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "too many wrong tokens came from this address" in guesses[-1][1]

    # the address is refused for a while: even a right token of a VM not yet verified waits it out
    throttled = await send_status(consumer, "10.1.0.2", timeout=10)
    assert throttled[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with dial(consumer, Kind.CONSUMER) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as attach:
            await cpb_grpc.ConsumerHostStub(channel).Attach(
                cpb.AttachRequest(network="blue", address="10.1.0.3", token="guess"), timeout=10)
    assert attach.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refusals = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) + 2  # the guesses', the throttled send's, Attach's
    assert exhausted(hosts["c1"], "bad_tokens") == exhausted(hosts["c1"]) == refusals

    # no leasing agent: the sentence says so without naming it; other refusals name nothing internal either
    cluster.signal("registry1")
    no_agent = await send_status(consumer, "10.1.0.3", timeout=10)
    assert no_agent[0] == grpc.StatusCode.UNAVAILABLE and "leasing agents or etcd is unavailable" in no_agent[1]
    others = [no_agent, await send_status(consumer, "10.1.0.1", target="10.1.255.9:7"),
              await send_status(consumer, "10.1.0.1", target="10.2.255.1:7")]
    assert_no_internal_names([m for _, m in guesses] + [throttled[1], attach.value.details() or ""]
                             + [m for _, m in others], producer.address, registry.address)


async def test_a_flood_from_one_consumer_vm_is_refused_past_each_bound_while_another_vm_keeps_being_served(
        cluster):
    registry, producer, hosts = start(cluster, vms=8, handler="tests.handlers:sleepy seconds=0.2", consumers={
        "c1": (["10.1.0.1", "10.1.0.2"], ("--max-stream-requests", "50", "--max-pool-waiters", "100")),
        "c2": (["10.1.0.5"], ("--max-vm-requests", "5")),
        "c3": (["10.1.0.6"], ("--max-pool-waiters", "3"))})
    c1, c2, c3 = hosts["c1"].address, hosts["c2"].address, hosts["c3"].address
    await send(c1, "10.1.0.2", b"0")  # the other consumer VM holds its own pool
    before = memory_of(hosts["c1"]).rss_kib

    async def flood() -> list[cpb.SendResponse]:
        async def messages() -> AsyncIterator[cpb.SendRequest]:
            for i in range(FLOOD):
                yield cpb.SendRequest(network="blue", src="10.1.0.1", token="tok-10.1.0.1", target=TARGET,
                                      payload=b"0.2", request_id=i + 1)
        async with dial(c1, Kind.CONSUMER) as channel:
            return [r async for r in cpb_grpc.ConsumerHostStub(channel).SendStream(messages(), timeout=120)]

    async def other_vm() -> list[tuple[grpc.StatusCode, str]]:
        return [await send_status(c1, "10.1.0.2", b"0", timeout=10) for _ in range(30)]

    answers, served = await asyncio.gather(flood(), other_vm())
    after = memory_of(hosts["c1"]).rss_kib
    codes = collections.Counter(Status.of(r.status_code).name for r in answers)
    print(f"\nflood of {FLOOD} on one stream: {dict(codes)}; the other VM: "
          f"{names(served)}; consumer host RSS {before} KiB before, {after} KiB after "
          f"({after - before:+d} KiB)")
    assert len(answers) == FLOOD and len({r.request_id for r in answers}) == FLOOD  # each answered once
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    refusals = [r.status_message for r in answers if r.status_code]
    assert all("this stream already has 50 requests in flight" in m for m in refusals)
    assert served == [(grpc.StatusCode.OK, "")] * 30  # the other tenant never noticed

    # the per-VM bound, on unary Sends: 40 at once from one VM, 5 allowed in flight
    burst = await asyncio.gather(*(send_status(c2, "10.1.0.5", b"0.5", timeout=20) for _ in range(40)))
    exhausted_answers = [m for c, m in burst if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    print(f"40 unary Sends at once with --max-vm-requests 5: {names(burst)}")
    assert exhausted_answers and all("already has 5 requests in flight, its limit" in m for m in exhausted_answers)
    assert {c for c, _ in burst} == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert exhausted(hosts["c1"], "stream_requests") == exhausted(hosts["c1"]) == codes["RESOURCE_EXHAUSTED"]
    assert exhausted(hosts["c2"], "vm_requests") == exhausted(hosts["c2"]) == len(exhausted_answers)

    # the pool's queue: 2 VMs busy, 3 requests may wait, the rest are refused at once
    burst = await asyncio.gather(*(send_status(c3, "10.1.0.6", b"0.5", timeout=20) for _ in range(40)))
    queue_full = [m for c, m in burst if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    print(f"40 unary Sends at once with --max-pool-waiters 3: {names(burst)}")
    assert queue_full and all("requests of consumer VM 10.1.0.6 already wait for a producer VM of service 'echo', "
                              "the limit" in m for m in queue_full)
    assert {c for c, _ in burst} == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert exhausted(hosts["c3"], "pool_waiters") == exhausted(hosts["c3"]) == len(queue_full)
    assert_no_internal_names(refusals + exhausted_answers + queue_full, producer.address, registry.address)
