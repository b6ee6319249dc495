"""The notebook server: one process per VM, serving notebook.v1.Notebook with the standard health
service and server reflection.

    python -m examples.notebook.server --listen unix:///path.sock|127.0.0.1:PORT --vm-id ID --workdir DIR [--history FILE]

State lives in memory and in a journal in the working directory (replayed at start), so a VM
restarted with the same workdir keeps its notebook and one restarted with an empty workdir (what
leasenet's reset does) starts empty. It prints one line `notebook serving on ADDRESS` once ready
(the bound port for `127.0.0.1:0`) and stops gracefully on SIGTERM.

This is the user's code: it knows nothing of leasenet except the `leasenet-claim` request metadata
the producer host adds, which it reports (Whoami) and records (--history).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import inspect
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["Notebook"].full_name  # notebook.v1.Notebook
CLAIM_KEY = "leasenet-claim"
JOURNAL = "notebook.journal"
TRAILER_BIN = "notebook-trailer-bin"
STOP_GRACE_S = 5.0


class Store:
    """The notebook's entries: a dict, and an append-only journal of the puts in the workdir (one
    JSON line each, replayed at start): an append per put costs the same however big the notebook."""

    def __init__(self, workdir: Path) -> None:
        self.entries: dict[str, bytes] = {}
        path = workdir / JOURNAL
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():  # a torn last line (a SIGKILL mid-write) is skipped, not fatal
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    self.entries[record["key"]] = base64.b64decode(record["value"])
        self.journal: IO[str] = open(path, "a", encoding="utf-8")

    def put(self, key: str, value: bytes) -> bool:
        replaced = key in self.entries
        self.entries[key] = value
        self.journal.write(json.dumps({"key": key, "value": base64.b64encode(value).decode()}) + "\n")
        self.journal.flush()  # in the OS's hands: a SIGKILLed VM keeps what it answered OK
        return replaced

    def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self.entries.items() if k.startswith(prefix))

    def close(self) -> None:
        self.journal.close()


class History:
    """One JSON line per call (--history): which VM ran which method under which claim, when
    (time.monotonic_ns, comparable across the processes of one machine) and with which status."""

    def __init__(self, stream: IO[str], vm_id: str) -> None:
        self.stream = stream
        self.vm_id = vm_id

    def record(self, method: str, claim: str, start_ns: int, end_ns: int, code: grpc.StatusCode) -> None:
        self.stream.write(json.dumps({"vm": self.vm_id, "method": method, "claim": claim, "start_ns": start_ns,
                                      "end_ns": end_ns, "code": code.name}) + "\n")
        self.stream.flush()


def claim_of(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == CLAIM_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def code_of(context: grpc.aio.ServicerContext, failed: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with: the one set (abort, set_code), else from how it ended."""
    set_code = context.code()
    if isinstance(set_code, grpc.StatusCode):
        return set_code
    if isinstance(set_code, int):  # grpc.aio keeps the raw integer
        return next((c for c in grpc.StatusCode if c.value[0] == set_code), grpc.StatusCode.UNKNOWN)
    if isinstance(failed, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.OK if failed is None else grpc.StatusCode.UNKNOWN


def recorded(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (a coroutine or an async generator) so that each call is written to
    the history, whatever way it ends."""
    name = method.__name__

    def write(self: NotebookServicer, context: grpc.aio.ServicerContext, start: int, failed: BaseException | None) -> None:
        if self.history is not None:
            self.history.record(name, claim_of(context), start, time.monotonic_ns(), code_of(context, failed))

    if inspect.isasyncgenfunction(method):
        @functools.wraps(method)
        async def streaming(self: NotebookServicer, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            start, failed = time.monotonic_ns(), None
            try:
                async for reply in method(self, request, context):
                    yield reply
            except BaseException as exc:
                failed = exc
                raise
            finally:
                write(self, context, start, failed)
        return streaming

    @functools.wraps(method)
    async def unary(self: NotebookServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start, failed = time.monotonic_ns(), None
        try:
            return await method(self, request, context)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            write(self, context, start, failed)
    return unary


class NotebookServicer(pb_grpc.NotebookServicer):
    def __init__(self, vm_id: str, workdir: Path, store: Store, history: History | None) -> None:
        self.vm_id = vm_id
        self.workdir = workdir
        self.store = store
        self.history = history

    @recorded
    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutReply:
        replaced = self.store.put(request.key, request.value)
        return pb.PutReply(replaced=replaced, keys=len(self.store.entries))

    @recorded
    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetReply:
        value = self.store.entries.get(request.key)
        return pb.GetReply(found=value is not None, value=value or b"")

    @recorded
    async def Scan(self, request: pb.ScanRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Entry]:
        for key, value in self.store.scan(request.prefix):
            yield pb.Entry(key=key, value=value)

    @recorded
    async def Append(self, requests: AsyncIterator[pb.Entry], context: grpc.aio.ServicerContext) -> pb.AppendReply:
        appended = 0
        async for entry in requests:
            self.store.put(entry.key, entry.value)
            appended += 1
        return pb.AppendReply(appended=appended, keys=len(self.store.entries))

    @recorded
    async def Chat(self, requests: AsyncIterator[pb.Line], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LineReply]:
        seen = 0
        async for line in requests:
            seen += 1
            yield pb.LineReply(seen=seen, text=line.text, data=line.data)

    @recorded
    async def Echo(self, request: pb.Line, context: grpc.aio.ServicerContext) -> pb.LineReply:
        return pb.LineReply(seen=1, text=request.text, data=request.data)

    @recorded
    async def Fail(self, request: pb.FailRequest, context: grpc.aio.ServicerContext) -> pb.FailReply:
        code = next((c for c in grpc.StatusCode if c.value[0] == request.code), None)
        if code is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no status code {request.code}")
        trailers: list[tuple[str, str | bytes]] = []
        if request.trailer_key:
            trailers.append((request.trailer_key, request.trailer_value))
        if request.trailer_bin:
            trailers.append((TRAILER_BIN, request.trailer_bin))
        context.set_trailing_metadata(tuple(trailers))
        if code is not grpc.StatusCode.OK:
            await context.abort(code, request.details, tuple(trailers))
        return pb.FailReply()

    @recorded
    async def Sleep(self, request: pb.SleepRequest, context: grpc.aio.ServicerContext) -> pb.SleepReply:
        await asyncio.sleep(request.ms / 1000)
        return pb.SleepReply(slept_ms=request.ms)

    @recorded
    async def Whoami(self, request: pb.WhoamiRequest, context: grpc.aio.ServicerContext) -> pb.WhoamiReply:
        headers = [pb.Header(key=k, binary=v) if isinstance(v, bytes) else pb.Header(key=k, value=v)
                   for k, v in context.invocation_metadata() or ()]
        remaining = context.time_remaining()
        return pb.WhoamiReply(vm_id=self.vm_id, pid=os.getpid(), workdir=str(self.workdir), claim=claim_of(context),
                              metadata=headers, deadline_remaining_s=remaining or 0.0, keys=len(self.store.entries))


async def serve(listen: str, vm_id: str, workdir: Path, history_path: Path | None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    store = Store(workdir)
    history_stream = open(history_path, "a", encoding="utf-8") if history_path else None
    history = History(history_stream, vm_id) if history_stream else None
    server = grpc.aio.server()
    pb_grpc.add_NotebookServicer_to_server(NotebookServicer(vm_id, workdir, store, history), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(listen)  # unix:///path and host:port alike
    if not listen.startswith("unix:") and port == 0:
        raise SystemExit(f"notebook: cannot listen on {listen}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    shown = listen if listen.startswith("unix:") else f"{listen.rsplit(':', 1)[0]}:{port}"
    print(f"notebook serving on {shown}", flush=True)
    await stopping.wait()
    # graceful: health says NOT_SERVING first, calls in flight get STOP_GRACE_S to finish
    await health_servicer.enter_graceful_shutdown()
    await server.stop(STOP_GRACE_S)
    store.close()
    if history_stream:
        history_stream.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.notebook.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="unix:///path.sock or HOST:PORT (PORT 0: any free port)")
    parser.add_argument("--vm-id", required=True, help="this VM's id (reported by Whoami and in the history)")
    parser.add_argument("--workdir", required=True, type=Path, help="where the notebook's journal is kept")
    parser.add_argument("--history", type=Path, help="append one JSON line per call to this file")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.listen, args.vm_id, args.workdir, args.history))
    except OSError as exc:
        sys.exit(f"notebook: {exc}")


if __name__ == "__main__":
    main()
