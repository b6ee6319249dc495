"""A notebook workload: consumer VMs using the notebook service the way its users do, with an
unmodified gRPC client (the generated stubs over grpc.aio) dialling their VIP endpoints. Nothing
here knows leasenet except the one metadata key a caller may set, `leasenet-idempotent: 1` (a call
leasenet may run again when a producer host dies mid-call). `leasenet demo` and the docker
deployment's `calls` job drive it; the chaos suite reads what it records.

    python -m examples.notebook.workload --vip NAME=unix:///run/leasenet/vmN-notebook.sock ... [--rounds N]
                                         [--history FILE]

Each consumer VM (one --vip each) waits until the service answers, then runs --rounds rounds of:
Whoami, Put(key, value), Get(key) (the value must be the one just put: one VM serves a lessee,
its state is the lessee's), and every 4th round Sleep (a call likely in flight when a VM dies),
Scan (server streaming), Append (client streaming) and Chat (bidi). One JSON line per call goes
to --history: vm, round, method, start_ns/end_ns (time.monotonic_ns: the VMs' own records use it
too), code, details, served_by (the VM id the last Whoami answered), for a streamed answer (Scan,
Chat) `received`, the messages of it that came, also when the call failed midway (once one came, a
cut call cannot be run again unseen: SPEC §6 answers it "delivery unknown", even if idempotent), and,
for a Get, `state`: kept (the value put), lost (not found: the VM was replaced in between) or wrong
(another value: never acceptable). The last line printed sums it up; the exit status is 1 if a Get was wrong or a VM
never got an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import grpc
import grpc.aio

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc

T = TypeVar("T")
IDEMPOTENT = (("leasenet-idempotent", "1"),)  # Whoami, Get, Scan: safe to run twice
CALL_TIMEOUT_S = 10.0
STREAM_EVERY = 4  # rounds: Sleep and the three streaming kinds
CALLS_PER_ROUND = 3 + 4 / STREAM_EVERY  # on average: what a budget of calls is divided by
# --wait-for-ready, by gRPC service config: every call waits (within its deadline) while the VIP
# endpoint cannot be reached, e.g. while its consumer host restarts, instead of failing; and the
# idempotent methods are retried by gRPC when a server answers UNAVAILABLE or CANCELLED (a server
# that stops answers CANCELLED to a call it had not begun: grpc/grpc#41785)
IDEMPOTENT_METHODS = ("Whoami", "Get", "Scan")
WAIT_FOR_READY = (("grpc.service_config", json.dumps({"methodConfig": [
    {"name": [{"service": "notebook.v1.Notebook", "method": m} for m in IDEMPOTENT_METHODS], "waitForReady": True,
     "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                     "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}},
    {"name": [{}], "waitForReady": True}]})),)


@dataclass
class Recorder:
    """Every call's outcome, as JSON lines to `stream` (if any) and as counts."""

    stream: IO[str] | None = None
    codes: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    served_by: set[str] = field(default_factory=set)
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def write(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        if self.stream is not None:
            self.stream.write(json.dumps(line) + "\n")
            self.stream.flush()

    def summary(self, vms: int, elapsed_s: float) -> str:
        errors = ", ".join(f"{c} {n}" for c, n in sorted(self.codes.items()) if c != "OK") or "none"
        states = ", ".join(f"{s} {self.states[s]}" for s in ("kept", "lost", "wrong"))
        return (f"calls: {self.calls} calls from {vms} consumer VMs in {elapsed_s:.1f} s: ok {self.codes['OK']}, "
                f"errors {errors}; Get after Put: {states}; served by {len(self.served_by)} VM processes")


class ConsumerVm:
    """One consumer VM: a channel to its VIP endpoint and the calls it makes, each recorded."""

    def __init__(self, name: str, target: str, recorder: Recorder, wait_for_ready: bool = False,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.name = name
        self.target = target
        self.recorder = recorder
        self.options = WAIT_FOR_READY if wait_for_ready else ()
        self.timeout_s = timeout_s  # each call's deadline
        self.served_by = ""  # the VM id of the last Whoami answer
        self.pid = 0  # the VM process of the last Whoami answer
        self.calls = 0  # made so far (each recorded)
        self.received: int | None = None  # messages of the current call's streamed answer (None: not streamed)

    async def call(self, round_: int, method: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any] | None:
        """Run one call and record its outcome; `run` returns what to record of its answer. None when
        the call failed."""
        start = time.monotonic_ns()
        answer, code, details = None, "OK", ""
        self.received = None
        try:
            answer = await run()
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        self.calls += 1
        self.recorder.codes[code] += 1
        streamed = {} if self.received is None else {"received": self.received}
        self.recorder.write({"event": "call", "vm": self.name, "round": round_, "method": method, "start_ns": start,
                             "end_ns": time.monotonic_ns(), "code": code, "details": details,
                             "served_by": self.served_by, **streamed, **(answer or {})})
        return answer

    async def streamed(self, replies: AsyncIterator[T]) -> list[T]:
        """A streamed answer's messages, each counted as it comes (self.received, recorded by `call`)."""
        self.received, got = 0, []
        async for reply in replies:
            self.received += 1
            got.append(reply)
        return got

    async def ready(self, stub: pb_grpc.NotebookStub, timeout_s: float) -> bool:
        """Wait until the service answers this VM (its first lease), for at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                reply = await stub.Whoami(pb.WhoamiRequest(), metadata=IDEMPOTENT, timeout=self.timeout_s)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)  # no VM leased yet (RESOURCE_EXHAUSTED) or the host not up
                continue
            self.served_by, self.pid = reply.vm_id, reply.pid
            self.recorder.write({"event": "ready", "vm": self.name, "served_by": reply.vm_id,
                                 "at_ns": time.monotonic_ns()})
            return True
        return False

    async def run(self, rounds: int, pause_s: float, ready_timeout_s: float) -> bool:
        async with grpc.aio.insecure_channel(self.target, options=self.options) as channel:
            stub = pb_grpc.NotebookStub(channel)
            if not await self.ready(stub, ready_timeout_s):
                print(f"calls: {self.name}: no answer from {self.target} within {ready_timeout_s:g} s", file=sys.stderr)
                return False
            for i in range(rounds):
                await self.round(stub, i)
                await asyncio.sleep(pause_s)  # pacing, so faults can land between and inside calls
        return True

    async def round(self, stub: pb_grpc.NotebookStub, i: int) -> None:
        key, value = f"round-{i}", f"{self.name}-{i}".encode()

        async def whoami() -> dict[str, Any]:
            reply = await stub.Whoami(pb.WhoamiRequest(), metadata=IDEMPOTENT, timeout=self.timeout_s)
            self.served_by, self.pid = reply.vm_id, reply.pid
            self.recorder.served_by.add(f"{reply.vm_id} pid {reply.pid}")
            return {"served_by": reply.vm_id, "pid": reply.pid, "claim": reply.claim}

        async def put() -> dict[str, Any]:
            await stub.Put(pb.PutRequest(key=key, value=value), timeout=self.timeout_s)
            return {}

        async def get() -> dict[str, Any]:
            reply = await stub.Get(pb.GetRequest(key=key), metadata=IDEMPOTENT, timeout=self.timeout_s)
            state = "kept" if reply.found and reply.value == value else "wrong" if reply.found else "lost"
            self.recorder.states[state] += 1
            return {"state": state}

        await self.call(i, "Whoami", whoami)
        if await self.call(i, "Put", put) is not None:
            await self.call(i, "Get", get)  # only after a Put that succeeded: its value must be there
        if i % STREAM_EVERY:
            return

        async def sleep() -> dict[str, Any]:
            await stub.Sleep(pb.SleepRequest(ms=300), timeout=self.timeout_s)
            return {}

        async def scan() -> dict[str, Any]:
            entries = await self.streamed(stub.Scan(pb.ScanRequest(prefix="round-"), metadata=IDEMPOTENT,
                                                    timeout=self.timeout_s))
            return {"entries": len(entries)}

        async def append() -> dict[str, Any]:
            async def entries() -> AsyncIterator[pb.Entry]:
                for j in range(3):
                    yield pb.Entry(key=f"append-{i}-{j}", value=value)
            reply = await stub.Append(entries(), timeout=self.timeout_s)
            return {"appended": reply.appended}

        async def chat() -> dict[str, Any]:
            async def lines() -> AsyncIterator[pb.Line]:
                for j in range(3):
                    yield pb.Line(text=f"{self.name} line {j}")
            replies = await self.streamed(stub.Chat(lines(), timeout=self.timeout_s))
            return {"seen": [r.seen for r in replies]}

        for method, run in (("Sleep", sleep), ("Scan", scan), ("Append", append), ("Chat", chat)):
            await self.call(i, method, run)


def consumer_vms(vips: Sequence[tuple[str, str]], recorder: Recorder, wait_for_ready: bool = False,
                 timeout_s: float = CALL_TIMEOUT_S) -> list[ConsumerVm]:
    """One ConsumerVm per (name, VIP endpoint)."""
    return [ConsumerVm(name, target, recorder, wait_for_ready, timeout_s) for name, target in vips]


async def run(vms: Sequence[ConsumerVm], rounds: int, pause_s: float = 0.1,
              ready_timeout_s: float = 120.0) -> bool:
    """Every VM runs its rounds at once; False if a VM never got an answer."""
    return all(await asyncio.gather(*(vm.run(rounds, pause_s, ready_timeout_s) for vm in vms)))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vip", action="append", required=True, metavar="NAME=TARGET",
                        help="a consumer VM's name and its VIP endpoint (unix:///path.sock or 127.0.0.1:PORT)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--pause-s", type=float, default=0.1, help="between rounds")
    parser.add_argument("--ready-timeout-s", type=float, default=120.0)
    parser.add_argument("--history", default="/dev/stdout", help="append one JSON line per call here")
    parser.add_argument("--call-timeout-s", type=float, default=CALL_TIMEOUT_S, help="each call's deadline")
    parser.add_argument("--wait-for-ready", action="store_true",
                        help="calls wait (within their deadline) while a VIP endpoint cannot be reached")
    args = parser.parse_args(argv)
    with open(args.history, "a", encoding="utf-8") as stream:
        recorder = Recorder(stream)
        vms = consumer_vms([(name, target) for name, _, target in (v.partition("=") for v in args.vip)], recorder,
                           args.wait_for_ready, args.call_timeout_s)
        started = time.monotonic()
        ready = await run(vms, args.rounds, args.pause_s, args.ready_timeout_s)
        elapsed = time.monotonic() - started
    print(recorder.summary(len(vms), elapsed), flush=True)
    return 0 if ready and not recorder.states["wrong"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
