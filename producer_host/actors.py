"""Producer VMs as actors: each VM owns an inbox and serves ONE request at a time, in order.
A request whose deadline passed while it queued is answered DEADLINE_EXCEEDED without running.
When an actor stops, every queued request is answered UNAVAILABLE (no caller waits forever).
Answers travel back to the consumer VM, which never learns which producer VM served it (SPEC
§10): their sentences say "its producer VM", and the VM's id goes to this host's log only."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from producer_host.handlers import Handler, HandlerError
from mapping.model import ProducerVm
from wire import metrics
from wire.errors import Status

log = logging.getLogger(__name__)

# (status, message, payload, delivered) -> None: sends the answer back through the tunnel;
# delivered says whether the VM started running the request (the consumer host retries only if not)
Reply = Callable[[Status, str, bytes, bool], None]
REQUESTS = metrics.Requests("producer_host")  # per execution: its service, status and time


@dataclass(slots=True)
class Envelope:
    payload: bytes
    request_id: int
    consumer: str
    fencing_token: int
    deadline_ms: int
    reply: Reply


class History:
    """JSON lines, one per execution: what the chaos checker reads to prove exclusivity."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def record(self, vm: str, env: Envelope, start_ns: int, end_ns: int, ok: bool) -> None:
        self.stream.write(json.dumps({"vm": vm, "request_id": env.request_id, "consumer": env.consumer,
                                      "token": env.fencing_token, "start_ns": start_ns, "end_ns": end_ns,
                                      "ok": ok}) + "\n")
        self.stream.flush()


class VmActor:
    def __init__(self, vm: ProducerVm, handler: Handler, history: History | None = None) -> None:
        self.vm = vm
        self.handler = handler
        self.history = history
        self.inbox: asyncio.Queue[Envelope] = asyncio.Queue()
        self.served = 0
        self.busy = False
        self._task: asyncio.Task[None] | None = None

    def start(self, tasks: asyncio.TaskGroup | None = None) -> asyncio.Task[None]:
        """Run the actor, as a child of `tasks` when given (a host's task group)."""
        spawn = tasks.create_task if tasks is not None else asyncio.get_running_loop().create_task
        self._task = spawn(self._run(), name=f"vm {self.vm.vm_id}")
        return self._task

    def tell(self, envelope: Envelope) -> None:
        if self._task is None or self._task.done():
            log.info("%s is stopped: request %d refused", self.vm.vm_id, envelope.request_id)
            envelope.reply(Status.UNAVAILABLE, "its producer VM is stopped", b"", False)
            return
        self.inbox.put_nowait(envelope)

    async def idle(self) -> None:
        """Return once nothing is queued or running (used by drain)."""
        while self.busy or not self.inbox.empty():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self.inbox.empty():
            self.inbox.get_nowait().reply(Status.UNAVAILABLE, "its producer VM stopped before running the request",
                                          b"", False)

    async def _run(self) -> None:
        while True:
            env = await self.inbox.get()
            if env.deadline_ms and time.time() * 1000 > env.deadline_ms:
                env.reply(Status.DEADLINE_EXCEEDED,
                          "the request's deadline passed while it queued for its producer VM", b"", False)
                REQUESTS.record(self.vm.service, Status.DEADLINE_EXCEEDED.name)  # never ran: not timed
                continue
            self.busy = True
            start = time.monotonic_ns()
            ok, code = False, Status.INTERNAL
            try:
                result = await self.handler(env.payload)
                ok, code = True, Status.OK
                env.reply(Status.OK, "", result, True)
            except HandlerError as exc:
                code = Status.INVALID_ARGUMENT
                env.reply(Status.INVALID_ARGUMENT, str(exc), b"", True)
            except asyncio.CancelledError:
                code = Status.UNAVAILABLE
                env.reply(Status.UNAVAILABLE, "its producer VM stopped while running the request", b"", True)
                raise
            except Exception:
                log.exception("handler of %s failed", self.vm.vm_id)
                env.reply(Status.INTERNAL, "the handler of its producer VM failed; see the producer host's log", b"",
                          True)
            finally:
                self.busy = False
                self.served += 1
                REQUESTS.record(self.vm.service, code.name, (time.monotonic_ns() - start) / 1e9)
                if self.history is not None:
                    self.history.record(self.vm.vm_id, env, start, time.monotonic_ns(), ok)
