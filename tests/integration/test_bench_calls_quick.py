"""`leasenet bench --calls --quick --json`: the call path's targets run end to end with tiny counts
(figures exist and are positive, never how big; the overlay once this tree has command VMs and VIP
endpoints), and the generic relay they measure is a real L7 proxy: every call kind, metadata,
deadline, trailers and status pass through it unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc
from leasenet.bench.render import render_calls
from leasenet.bench.servers import CallRelay
from tests.examples.notebook import notebook_server
from wire import rpc

pytestmark = pytest.mark.integration


def test_bench_calls_quick_json_measures_every_target_this_tree_has(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "leasenet", "bench", "--calls", "--quick", "--json", "--workdir",
                          str(tmp_path)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    rounds = report["settings"]["rounds"]
    cells = {(r["mode"], r["payload"], r["concurrency"]) for r in report["calls"]}
    assert cells == {(m, p, c) for m in ("unary", "stream") for p in (100, 16384) for c in (1, 64)}
    measured = set(report["targets_measured"])
    assert {"direct", "relay"} <= measured
    processes = {"direct": {"vm", "client"}, "relay": {"relay 1", "relay 2", "vm", "client"}}
    for row in report["calls"]:
        for target in ("direct", "relay"):
            figures = row["targets"][target]
            assert figures["rps"] > 0 and figures["p50_ms"] > 0 and figures["p99_ms"] >= figures["p50_ms"]
            assert set(figures["cpu_us_per_request"]) == processes[target]
            assert all(v > 0 for v in figures["cpu_us_per_request"].values()), figures
            assert row["answered"][target] == row["requests"][target] > 0 and not row["errors"][target]
        ratio = row["ratios"]["relay/direct"]["rps"]
        assert ratio["n"] == rounds and ratio["low"] <= ratio["median"] <= ratio["high"]
    bars = report["targets"]
    assert len(bars) == 16  # 4 throughput + 4 p50 ratios, 8 host CPU bars
    if "overlay" in measured:  # command VMs and VIP endpoints (branches vm-drivers and calls) are here
        for row in report["calls"]:
            figures = row["targets"]["overlay"]
            assert figures["rps"] > 0 and figures["p50_ms"] > 0
            assert all(figures["cpu_us_per_request"][p] > 0 for p in ("consumer host", "producer host", "client"))
        assert all(t["value"] is not None and t["pass"] in (True, False) for t in bars)
    else:  # the overlay's bars are listed, as not measured
        assert report["overlay_note"] and all(t["pass"] is None and t["note"] for t in bars)
    shown = render_calls(report)  # the tables a person reads, from the same JSON
    assert "relay/direct" in shown and all(t["target"] in shown for t in bars)


async def lines(*texts: str) -> AsyncIterator[pb.Line]:
    for text in texts:
        yield pb.Line(text=text)


async def entries(*keys: str) -> AsyncIterator[pb.Entry]:
    for key in keys:
        yield pb.Entry(key=key, value=key.encode())


async def test_the_generic_relay_passes_every_call_kind_metadata_trailers_and_status(tmp_path: Path) -> None:
    async with notebook_server(f"unix://{tmp_path / 'vm.sock'}", "vm-1", tmp_path / "work") as vm:
        async with rpc.channel(vm.address) as upstream:
            relay = rpc.Server("127.0.0.1:0")
            relay.server.add_generic_rpc_handlers((CallRelay(upstream),))
            address = await relay.start()
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = pb_grpc.NotebookStub(channel)
                    assert await stub.Put(pb.PutRequest(key="a", value=b"1")) == pb.PutReply(keys=1)
                    assert await stub.Append(entries("b", "c")) == pb.AppendReply(appended=2, keys=3)
                    assert [e.key async for e in stub.Scan(pb.ScanRequest())] == ["a", "b", "c"]
                    assert [r.seen async for r in stub.Chat(lines("x", "y"))] == [1, 2]
                    me = await stub.Whoami(pb.WhoamiRequest(), timeout=20,
                                           metadata=(("leasenet-claim", "c-1"), ("x-blob-bin", b"\x00\xff")))
                    seen = {h.key: h.binary or h.value for h in me.metadata}
                    assert me.claim == "c-1" and seen["x-blob-bin"] == b"\x00\xff"
                    assert 0 < me.deadline_remaining_s < 25  # the caller's deadline went on upstream
                    with pytest.raises(grpc.aio.AioRpcError) as failed:
                        await stub.Fail(pb.FailRequest(code=grpc.StatusCode.ABORTED.value[0], details="why",
                                                       trailer_key="x-k", trailer_value="v", trailer_bin=b"\x01"))
                    assert (failed.value.code(), failed.value.details()) == (grpc.StatusCode.ABORTED, "why")
                    trailers = dict(failed.value.trailing_metadata())
                    assert (trailers["x-k"], trailers["notebook-trailer-bin"]) == ("v", b"\x01")
                    with pytest.raises(grpc.aio.AioRpcError) as slow:
                        await stub.Sleep(pb.SleepRequest(ms=60_000), timeout=0.3)
                    assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                await relay.stop(0)
