"""SPEC §6, last row: malformed, oversized, spoofed, cross-network and unleased input is refused
with a status and a sentence, the process keeps serving, and nothing else is affected.

More than 10,000 random and near-valid frames and requests (and raw bytes that are no protobuf
at all) go to a producer host's tunnel and a consumer host's VM API. Afterwards both serve correct
traffic, and no state changed: etcd took no write, the lease is the same, no producer VM ran a
fuzzed request."""

from __future__ import annotations

import asyncio
import random
import string

import grpc
import grpc.aio
import pytest

from leasenet.checker import executions_from_lines, read_lines
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import tunnel_pb2 as tpb
from mapping import keys
from leasenet.cluster import LocalCluster
from tests.integration.helpers import TARGET, dial, history, leases, send, start
from wire.tls import Kind
from tests.integration.test_tunnel_validation import exchange

pytestmark = pytest.mark.integration

FRAMES = 7_000
REQUESTS = 3_000
RAW = 300
BATCH = 100
STREAMS = 10
SEED = 20_26
ALPHABET = string.printable + "äßλ中\u202e\x00"
ADDRESSING = ("vni", "src_host", "dst_host", "fencing_token", "network", "src", "dst")


def text(rng: random.Random, most: int = 24) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, most)))


def address_like(rng: random.Random) -> str:
    return rng.choice([text(rng), f"10.1.{rng.randint(0, 300)}.{rng.randint(0, 300)}", "", "10.1.0.1",
                       "255.255.255.255", "::1", f"127.0.0.1:{rng.randint(0, 70_000)}"])


def random_value(rng: random.Random, field: str) -> object:
    match field:
        case "vni":
            return rng.choice([0, 100, 200, 1 << 24, rng.getrandbits(32)])
        case "fencing_token":
            return rng.choice([0, -1, rng.getrandbits(63), -rng.getrandbits(63), rng.randint(1, 1000)])
        case _:
            return address_like(rng)


def fuzzed_frame(rng: random.Random, frame_id: int, valid: dict[str, object]) -> tpb.Frame:
    """Random headers, a near-valid frame with 1-3 addressing fields changed, or a part missing."""
    flavour = rng.random()
    if flavour < 0.4:
        values = {f: random_value(rng, f) for f in ADDRESSING}
    else:
        values = dict(valid)
        for field in rng.sample(ADDRESSING, rng.randint(1, 3)):
            while values[field] == valid[field]:
                values[field] = random_value(rng, field)
    frame = tpb.Frame(
        id=frame_id,
        outer=tpb.OuterHeader(vni=values["vni"], src_host=values["src_host"], dst_host=values["dst_host"],
                              fencing_token=values["fencing_token"]),
        inner=tpb.InnerHeader(network=values["network"], src=values["src"], dst=values["dst"],
                              src_port=rng.getrandbits(16), dst_port=rng.getrandbits(32),
                              request_id=rng.getrandbits(64), deadline_ms=rng.choice([0, -5, rng.getrandbits(62)]),
                              idempotent=rng.random() < 0.5),
        payload=rng.randbytes(rng.randint(0, 512)), status_code=rng.randint(-5, 20),
        status_message=text(rng), delivered=rng.random() < 0.5)
    if 0.9 < flavour < 0.95:
        frame.ClearField("outer")
    elif flavour >= 0.95:
        frame.ClearField("inner")
    return frame


def fuzzed_request(rng: random.Random, request_id: int) -> cpb.SendRequest:
    """Random fields, or the attached VM's request with a wrong token, a spoofed source, a foreign
    network or target, or an oversized payload. Never the right token: none of them may run."""
    req = cpb.SendRequest(network=rng.choice(["blue", "red", text(rng)]), src=rng.choice(["10.1.0.1", address_like(rng)]),
                          src_port=rng.getrandbits(32), target=rng.choice([TARGET, "10.2.255.1:7", text(rng), "1.2.3.4:0"]),
                          payload=rng.randbytes(rng.randint(0, 256)), token=rng.choice(["", "tok-10.1.0.2", text(rng)]),
                          request_id=request_id, idempotent=rng.random() < 0.5)
    if rng.random() < 0.01:
        req.payload = b"x" * (1024 * 1024 + rng.randint(1, 1000))  # over the 1 MiB limit
    return req


async def fuzz_tunnel(address: str, rng: random.Random, valid: dict[str, object]) -> list[tpb.Frame]:
    """Batches on several streams at once (a token that may be early makes its answer wait up to 1 s)."""
    batches = [[fuzzed_frame(rng, i, valid) for i in range(start, min(start + BATCH, FRAMES + 1))]
               for start in range(1, FRAMES + 1, BATCH)]
    answers: list[tpb.Frame] = []
    for i in range(0, len(batches), STREAMS):
        for got in await asyncio.gather(*(exchange(address, b) for b in batches[i:i + STREAMS])):
            answers += got.values()
    return answers


async def fuzz_consumer(address: str, rng: random.Random) -> list[grpc.StatusCode]:
    codes: list[grpc.StatusCode] = []
    requests = [fuzzed_request(rng, i) for i in range(REQUESTS)]
    async with dial(address, Kind.CONSUMER) as channel:
        send_call = channel.unary_unary("/leasenet.v1.ConsumerHost/Send",
                                        request_serializer=cpb.SendRequest.SerializeToString,
                                        response_deserializer=cpb.SendResponse.FromString)

        async def one(req: cpb.SendRequest) -> None:
            try:
                await send_call(req, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())

        for i in range(0, len(requests), 100):
            await asyncio.gather(*(one(r) for r in requests[i:i + 100]))
    return codes


async def raw_bytes(address: str, kind: Kind, methods: list[str], rng: random.Random) -> int:
    """Bytes that are no protobuf message, on unary and streaming methods, and unknown methods."""
    sent = 0
    async with dial(address, kind) as channel:
        for i in range(RAW // 2):
            method = rng.choice(methods + ["/leasenet.v1.Nope/Nothing"])
            garbage = rng.randbytes(rng.randint(1, 300))
            try:
                if method.endswith(("Exchange", "SendStream")):
                    call = channel.stream_stream(method)()
                    await call.write(garbage)
                    await call.done_writing()
                    async for _ in call:
                        pass
                else:
                    await channel.unary_unary(method)(garbage, timeout=5)
            except grpc.aio.AioRpcError:
                pass
            sent += 1
    return sent


async def etcd_revision(cluster: LocalCluster) -> int:
    store = await cluster.open_store()
    try:
        return (await store.snapshot(keys.ROOT)).revision
    finally:
        await store.close()


async def test_ten_thousand_random_and_malformed_inputs_are_refused_and_change_nothing(cluster):
    topo = start(cluster, vms=2, consumers=[["10.1.0.1"]])
    consumer, producer = topo.consumers[0], topo.producers[0]
    await send(consumer.address, "10.1.0.1", b"before")
    [lease] = await leases(topo.registry.address)
    [member] = lease.members
    valid = {"vni": 100, "src_host": consumer.address, "dst_host": producer.address,
             "fencing_token": member.fencing_token, "network": "blue", "src": "10.1.0.1", "dst": member.address}
    revision = await etcd_revision(cluster)
    ran = len(executions_from_lines(read_lines(history(cluster))))
    rng = random.Random(SEED)

    frames, codes, raw = await asyncio.gather(
        fuzz_tunnel(producer.address, rng, valid), fuzz_consumer(consumer.address, random.Random(SEED + 1)),
        raw_bytes(producer.address, Kind.PRODUCER, ["/leasenet.v1.Tunnel/Exchange"], random.Random(SEED + 2)))
    raw += await raw_bytes(consumer.address, Kind.CONSUMER, ["/leasenet.v1.ConsumerHost/Send", "/leasenet.v1.ConsumerHost/SendStream",
                                              "/leasenet.v1.ConsumerHost/Attach"], random.Random(SEED + 3))

    assert len(frames) + len(codes) + raw >= 10_000
    # every frame got exactly one answer, a refusal with a sentence, and no VM ran it
    assert len(frames) == FRAMES and len({f.id for f in frames}) == FRAMES
    refused = [f for f in frames if f.status_code != 0]
    assert len(refused) == FRAMES and all(f.status_message and not f.delivered for f in refused)
    assert grpc.StatusCode.OK not in codes and len(codes) == REQUESTS
    # nothing changed: no etcd write, the same lease, no execution
    assert await etcd_revision(cluster) == revision
    assert [(l.lease_id, [m.vm_id for m in l.members]) for l in await leases(topo.registry.address)] == \
        [(lease.lease_id, [member.vm_id])]
    assert len(executions_from_lines(read_lines(history(cluster)))) == ran
    # and both still serve correct traffic
    assert (await send(consumer.address, "10.1.0.1", b"after")).payload == b"after"
    good = tpb.Frame(id=1, outer=tpb.OuterHeader(vni=100, src_host=consumer.address, dst_host=producer.address,
                                                 fencing_token=member.fencing_token),
                     inner=tpb.InnerHeader(network="blue", src="10.1.0.1", dst=member.address, dst_port=7),
                     payload=b"direct")
    answer = (await exchange(producer.address, [good]))[1]
    assert (answer.status_code, answer.payload) == (0, b"direct")
