"""Producer VMs as actors: each VM owns an inbox and serves ONE request at a time, in order.
A request whose deadline passed while it queued is answered DEADLINE_EXCEEDED without running.
When an actor stops, every queued request is answered UNAVAILABLE (no caller waits forever).
Answers travel back to the consumer VM, which never learns which producer VM served it (SPEC
§10): their sentences say "its producer VM", and the VM's id goes to this host's log only.

Tenancy (SPEC §10): the inbox is bounded (RESOURCE_EXHAUSTED past it); the fencing token is checked
again when a request starts, so a request queued under a claim that has since ended is dropped,
not run; each claim gets a fresh handler, so a new lessee never sees its predecessor's state; and
every call runs under the request's deadline (capped by the host's handler timeout)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO

from producer_host import limits
from producer_host.handlers import Handler, HandlerError
from mapping.model import ProducerVm, VmId
from wire import metrics
from wire.errors import Status
from wire.limits import MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

# (status, message, payload, delivered) -> None: sends the answer back through the tunnel;
# delivered says whether the VM started running the request (the consumer host retries only if not)
Reply = Callable[[Status, str, bytes, bool], None]
REQUESTS = metrics.Requests("producer_host")  # per execution: its service, status and time
# (VM, fencing token) -> whether that token is still the VM's current claim (the host's replica)
ClaimCheck = Callable[[VmId, int], bool]
# awaited with a claim's fencing token before the claim's first call runs on the VM (a command VM
# reset by restart marks its record used, so that no registry grants it again before its reset)
FirstUse = Callable[[int], Awaitable[None]]
DEFAULTS = limits.Limits()


@dataclass(slots=True)
class Envelope:
    payload: bytes
    request_id: int
    consumer: str
    fencing_token: int
    deadline_ms: int
    reply: Reply
    turn: Turn | None = None  # a transparent call waiting for the VM's slot, not a payload to run


class Refused(Exception):
    """A transparent call's turn was refused before the VM saw it (queue full, deadline passed while
    queued, claim ended, VM stopped): the status and sentence, as a Send envelope would get them."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(eq=False, slots=True)
class Turn:
    """A transparent call's hold on its VM's one slot (VmActor.turn). `budget_s`: how long the call
    may run (its deadline, capped by the host's handler timeout); `ok`: set by the holder, recorded."""

    go: asyncio.Future[None]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    budget_s: float = 0.0
    ok: bool = False


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
    def __init__(self, vm: ProducerVm, handlers: Callable[[], Handler], history: History | None = None, *,
                 claim_is_current: ClaimCheck | None = None, queue_limit: int = DEFAULTS.vm_queue,
                 timeout_s: float = DEFAULTS.handler_timeout) -> None:
        self.vm = vm
        self.handlers = handlers  # a fresh handler per claim
        self.history = history
        self.claim_is_current = claim_is_current  # None: no replica to ask (in-process tests)
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.inbox: asyncio.Queue[Envelope] = asyncio.Queue(maxsize=queue_limit)
        self.served = 0
        self.dropped = 0  # requests whose claim ended while they queued
        self.busy = False
        self._task: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        self._token = 0  # the claim `_handler` serves
        # the gRPC target of the VM's own server while it is healthy and registered
        # (unix:///abs/path.sock or 127.0.0.1:PORT); None for an in-process handler VM
        self.endpoint: str | None = None
        self.first_use: FirstUse | None = None  # set by the VM's supervisor (producer_host.vms)
        self.on_claim_ended: Callable[[int], None] | None = None  # the supervisor's reset trigger
        self._used_token = 0  # the claim `first_use` was awaited for

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
        try:
            self.inbox.put_nowait(envelope)
        except asyncio.QueueFull:
            log.info("%s has %d requests queued: request %d refused", self.vm.vm_id, self.queue_limit,
                     envelope.request_id)
            metrics.exhausted("producer_host", "vm_queue")
            envelope.reply(Status.RESOURCE_EXHAUSTED, limits.vm_queue_full(self.queue_limit), b"", False)

    @asynccontextmanager
    async def turn(self, request_id: int, consumer: str, fencing_token: int,
                   deadline_ms: int) -> AsyncIterator[Turn]:
        """The VM's one slot for a transparent call, in FIFO order with the Send envelopes (the same
        bounded inbox). Raises Refused, with the sentence a Send would get, when the inbox is full,
        the deadline passed while queued, the claim ended meanwhile or the VM stopped; the call then
        never ran. While the caller holds the turn the VM is busy; on exit the execution is recorded
        in the History (the chaos checker's proof of exclusivity)."""
        turn = Turn(asyncio.get_running_loop().create_future())

        def refused(status: Status, message: str, payload: bytes, delivered: bool) -> None:
            if not turn.go.done():
                turn.go.set_exception(Refused(status, message))

        self.tell(Envelope(b"", request_id, consumer, fencing_token, deadline_ms, refused, turn))
        try:
            await turn.go  # first_use was awaited before it, as for a Send (_mark_used)
            yield turn
        finally:
            if not turn.go.done():
                turn.go.cancel()  # left while queued: the actor skips it
            turn.done.set()

    def claim_ended(self, token: int) -> None:
        """The claim `token` ended: its lessee's state goes now, not when the next lessee arrives."""
        if token == self._token:
            self._handler = None
        if self.on_claim_ended is not None:
            self.on_claim_ended(token)

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

    def _handler_for(self, token: int) -> Handler:
        if self._handler is None or token != self._token:
            self._handler, self._token = None, token
            self._handler = self.handlers()
        return self._handler

    def _budget_s(self, env: Envelope) -> float:
        if not env.deadline_ms:
            return self.timeout_s
        return min(self.timeout_s, env.deadline_ms / 1000 - time.time())

    async def _run(self) -> None:
        while True:
            env = await self.inbox.get()
            if env.deadline_ms and time.time() * 1000 > env.deadline_ms:
                env.reply(Status.DEADLINE_EXCEEDED, limits.DEADLINE_WHILE_QUEUED, b"", False)
                REQUESTS.record(self.vm.service, Status.DEADLINE_EXCEEDED.name)  # never ran: not timed
                continue
            if self.claim_is_current is not None and not self.claim_is_current(self.vm.vm_id, env.fencing_token):
                self.dropped += 1
                log.info("%s: claim %d ended while request %d queued; dropped", self.vm.vm_id, env.fencing_token,
                         env.request_id)
                env.reply(Status.FAILED_PRECONDITION, limits.CLAIM_ENDED, b"", False)
                REQUESTS.record(self.vm.service, Status.FAILED_PRECONDITION.name)  # never ran: not timed
                continue
            if env.turn is not None and env.turn.go.done():  # its caller left while it queued
                continue
            if not await self._mark_used(env):
                continue
            if env.turn is not None:
                await self._hold(env, env.turn)
                continue
            self.busy = True
            start = time.monotonic_ns()
            status, message, result = Status.INTERNAL, limits.HANDLER_FAILED, b""
            try:
                status, message, result = await self._call(env)
            except asyncio.CancelledError:
                status, message = Status.UNAVAILABLE, "its producer VM stopped while running the request"
                raise
            finally:
                self.busy = False
                self.served += 1
                env.reply(status, message, result, True)
                REQUESTS.record(self.vm.service, status.name, (time.monotonic_ns() - start) / 1e9)
                if self.history is not None:
                    self.history.record(self.vm.vm_id, env, start, time.monotonic_ns(), status is Status.OK)

    async def _hold(self, env: Envelope, turn: Turn) -> None:
        """Give a transparent call the slot and wait until it is over."""
        if turn.go.done():  # its caller left while the VM was being marked used
            return
        self.busy = True
        start = time.monotonic_ns()
        turn.budget_s = self._budget_s(env)
        turn.go.set_result(None)
        try:
            await turn.done.wait()
        finally:
            self.busy = False
            self.served += 1
            if self.history is not None:
                self.history.record(self.vm.vm_id, env, start, time.monotonic_ns(), turn.ok)

    async def _mark_used(self, env: Envelope) -> bool:
        """Await `first_use` once per claim before its first call; a claim whose VM cannot be marked
        is not run (undelivered: the consumer host retries elsewhere), since the VM could otherwise
        be granted to the next lessee without its reset."""
        if self.first_use is None or env.fencing_token == self._used_token:
            return True
        self.busy = True
        try:
            await self.first_use(env.fencing_token)
        except Exception as exc:  # the store, most likely: the request is not run
            log.warning("%s: cannot mark the VM used for claim %d: %s", self.vm.vm_id, env.fencing_token, exc)
            env.reply(Status.UNAVAILABLE, "its producer VM could not be prepared for the request; it was not run",
                      b"", False)
            REQUESTS.record(self.vm.service, Status.UNAVAILABLE.name)  # never ran: not timed
            return False
        finally:
            self.busy = False
        self._used_token = env.fencing_token
        return True

    async def _call(self, env: Envelope) -> tuple[Status, str, bytes]:
        """One handler call under the request's deadline: the answer, or why there is none. The
        consumer VM gets leasenet's sentences only; exceptions' text goes to this host's log."""
        scope = asyncio.timeout(self._budget_s(env))
        try:
            async with scope:
                result = await self._handler_for(env.fencing_token)(env.payload)
        except HandlerError as exc:
            return Status.INVALID_ARGUMENT, str(exc), b""
        except TimeoutError:
            if scope.expired():
                log.info("%s: request %d stopped at its deadline", self.vm.vm_id, env.request_id)
                return Status.DEADLINE_EXCEEDED, limits.DEADLINE_WHILE_RUNNING, b""
            log.exception("handler of %s failed", self.vm.vm_id)
            return Status.INTERNAL, limits.HANDLER_FAILED, b""
        except Exception:
            log.exception("handler of %s failed", self.vm.vm_id)
            return Status.INTERNAL, limits.HANDLER_FAILED, b""
        if not isinstance(result, bytes) or len(result) > MAX_PAYLOAD_BYTES:
            log.error("handler of %s answered %r...: not bytes within the %d-byte limit", self.vm.vm_id,
                      result[:40] if isinstance(result, (bytes, str)) else type(result), MAX_PAYLOAD_BYTES)
            return Status.INTERNAL, limits.BAD_ANSWER, b""
        return Status.OK, "", result
