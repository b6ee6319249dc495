"""The VIP as a local endpoint (issue 18 part 4): for each `[[vms.vip]]` of consumer.toml, a gRPC
server on a unix socket (or, for experiments, a loopback port) that stands for one target VIP to
one consumer VM. The consumer host is the VM's virtual NIC: whoever connects is that VM, so no
token is asked; the socket's owner and mode are the VM's identity (ARCHITECTURE.md, threat model).

Its generic handler takes ANY method, unparsed: each call is carried whole, as raw bytes, through
the tunnel's `Call` stream to a pool VM's own gRPC server (producer_host/calls.py). Per call:

    step 1        the target exists in the VM's network (datapath.admit, as for Send)
    steps 2-6     a pool VM (PoolManager.acquire): the call holds it from start to end
    steps 7-9     route: the CallStart's headers are a frame's (dst rewritten, outer header)
    the call      metadata minus hop-by-hop and leasenet-* keys (traceparent passes unchanged), the
                  deadline, messages both ways as they come, cancel both ways; back the VM's
                  headers, messages, code, details and trailers unchanged

SPEC §6 on this path (failover.verdict decides):
    an `end` before `accepted`   refused before the VM saw it: retried on another VM, replaying the
                                 CallStart and the request messages sent so far (kept in a bounded
                                 buffer; past its bound before `accepted`, the client is not read
                                 until it comes)
    tunnel broke / VM's server   delivery unknown: UNAVAILABLE, unless the caller marked the call
      lost after the start       idempotent (metadata `leasenet-idempotent: 1`) AND nothing went
                                 back to it yet AND every request message is still in the buffer
                                 (like gRPC's own per-RPC retry buffer): then retried. A streamed
                                 answer cut after its first message is not retried, idempotent or
                                 not; the sentence says which condition failed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from consumer_host.config import VipEndpoint
from consumer_host.datapath import Attachment, admit, route
from consumer_host.failover import NOT_IDEMPOTENT, Happened, Retry, out_of_attempts, verdict
from consumer_host.pools import PoolManager
from consumer_host.tunnel import Tunnels
from mapping.replica import Replica
from wire import metrics
from wire.callmeta import to_entries, to_grpc_metadata
from wire.errors import DeadlineExceeded, LeasenetError, Status, error_for_status
from wire.limits import MAX_PAYLOAD_BYTES
from wire.rpc import STATUS_BY_NUMBER, to_grpc
from wire.trace import CURRENT, TRACEPARENT, bind, start
from wire.v1 import tunnel_pb2 as tpb
from wire.verdict import Refusal

log = logging.getLogger(__name__)

KIND = "consumer_host"
IDEMPOTENT_KEY = "leasenet-idempotent"  # "1": the caller says the call may run twice
# hop-by-hop headers and gRPC's own (HTTP/2 or grpc sets them anew on the next hop)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "host",
                        "user-agent", "content-type", "content-length"})
# grpc's words for an RST_STREAM with REFUSED_STREAM (7): a stream the server did not process (RFC 9113
# §8.7), so never delivered. It happens when a call's stream reaches the producer host before the
# stream slot of one that just ended is freed there (its HTTP/2 streams-per-connection cap).
REFUSED_STREAM = "RST_STREAM with error code 7"
# the replay buffer of one call (what a retry on another VM sends again): as gRPC's per-RPC buffer
REPLAY_MESSAGES = 64
REPLAY_BYTES = 2 * MAX_PAYLOAD_BYTES
DEADLINE_MARGIN_S = 1.0  # the tunnel call outlives the VM's deadline, so the VM's own status comes back
# the caller's messages within the payload limit (gRPC refuses bigger ones with RESOURCE_EXHAUSTED)
SERVER_OPTIONS = [("grpc.max_receive_message_length", MAX_PAYLOAD_BYTES),
                  ("grpc.max_send_message_length", MAX_PAYLOAD_BYTES), ("grpc.so_reuseport", 0)]


def forwarded(metadata: tuple[tuple[str, str | bytes], ...] | None) -> list[tpb.MetadataEntry]:
    """The caller's metadata that travels to the VM: not hop-by-hop, not gRPC's reserved `grpc-*`
    nor pseudo-headers, not leasenet's own `leasenet-*` (traceparent passes unchanged)."""
    return to_entries((k, v) for k, v in metadata or ()
                      if not (k in HOP_BY_HOP or k.startswith((":", "grpc-", "leasenet-"))))


def marked_idempotent(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bool:
    return any(k == IDEMPOTENT_KEY and v in ("1", b"1", "true") for k, v in metadata or ())


@dataclass(eq=False, slots=True)
class _Call:
    """One call's state across its attempts: the caller's messages (a bounded replay buffer), and
    what decides whether it may be retried."""

    idempotent: bool
    # the caller's messages read and not yet sent: two, so that a unary call's message and its end
    # are both there when its CallStart goes (one stream message for the whole request)
    inbox: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=2))
    replay: list[bytes] = field(default_factory=list)
    replay_bytes: int = 0
    overflowed: bool = False  # a request message is no longer in the buffer: no retry after `accepted`
    client_done: bool = False  # the caller half-closed
    answered: bool = False  # something went back to the caller: a retry would show it twice
    accepted: asyncio.Event = field(default_factory=asyncio.Event)  # of the current attempt
    requests: int = 0
    responses: int = 0

    def full(self) -> bool:
        return len(self.replay) >= REPLAY_MESSAGES or self.replay_bytes >= REPLAY_BYTES

    def keep(self, message: bytes) -> None:
        """Into the replay buffer while a retry may still need it (before `accepted` always; after
        it only for an idempotent call, until the bound)."""
        self.requests += 1
        if self.overflowed:
            return
        if self.accepted.is_set() and (not self.idempotent or self.full()):
            self.overflowed, self.replay, self.replay_bytes = True, [], 0  # free it: no retry needs it
            return
        self.replay.append(message)
        self.replay_bytes += len(message)

    def may_retry_after_start(self) -> bool:
        return self.idempotent and not self.answered and not self.overflowed

    def why_not_retried(self) -> str:
        """When a retry after the start may not be run: why, as the caller hears it."""
        if not self.idempotent:
            return NOT_IDEMPOTENT
        if self.answered:
            return "part of its answer had already gone back to the caller"
        return "its request messages no longer fit the replay buffer"


class _Failed(Exception):
    """An attempt that got no status from a VM: what happened, for failover.verdict."""

    def __init__(self, happened: Happened, why: str) -> None:
        super().__init__(why)
        self.happened = happened


class VipCalls:
    """The calls of one VIP endpoint (one consumer VM, one target)."""

    def __init__(self, endpoint: VipEndpoint, attachment: Attachment, replica: Replica, pools: PoolManager,
                 tunnels: Tunnels, address: str, *, max_attempts: int = 3, default_deadline_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.attachment = attachment
        self.replica = replica
        self.pools = pools
        self.tunnels = tunnels
        self.address = address  # this consumer host's advertised address (the outer header's src_host)
        self.max_attempts = max_attempts
        self.default_deadline_s = default_deadline_s

    async def handle(self, method: str, request_iterator: AsyncIterator[bytes],
                     context: grpc.aio.ServicerContext) -> None:
        metadata = context.invocation_metadata()
        caller = next((v for k, v in metadata or () if k == TRACEPARENT and isinstance(v, str)), None)
        request_id = random.getrandbits(62)
        trace = start(caller)  # the caller's trace (its traceparent itself goes to the VM unchanged)
        token = bind(trace.trace_id, request_id)
        call = _Call(marked_idempotent(metadata))
        began, code = time.perf_counter(), Status.UNKNOWN.name
        reader = asyncio.get_running_loop().create_task(_read_caller(request_iterator, call.inbox))
        try:
            code = await self._call(method, metadata, call, context, request_id, trace.header())
        except LeasenetError as exc:
            code = exc.code.name
            metrics.answered(KIND, exc)
            log.debug("call %d %s from %s to %s: %s %s", request_id, method, self.attachment.vm_id,
                      self.endpoint.target, code, exc.message)
            await context.abort(to_grpc(exc.code), exc.message)
        except asyncio.CancelledError:
            code = Status.CANCELLED.name
            raise
        except Exception:  # its text may name a producer host: for our log only (SPEC §10)
            code = Status.INTERNAL.name
            log.exception("call %d %s from %s failed", request_id, method, self.attachment.vm_id)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the consumer host; see its log")
        finally:
            reader.cancel()
            metrics.call_done(KIND, call.requests, call.responses, code, time.perf_counter() - began)
            CURRENT.reset(token)

    async def _call(self, method: str, metadata: tuple[tuple[str, str | bytes], ...] | None, call: _Call,
                    context: grpc.aio.ServicerContext, request_id: int, traceparent: str) -> str:
        admitted = admit(self.attachment, self.replica.state, self.endpoint.target)
        if isinstance(admitted, Refusal):
            raise admitted.exception()
        remaining = context.time_remaining()
        deadline = time.monotonic() + (self.default_deadline_s if remaining is None else remaining)
        entries = forwarded(metadata)
        last: Retry | None = None
        for _ in range(self.max_attempts):
            pool, member = await self.pools.acquire(admitted, deadline)
            left = deadline - time.monotonic()
            r = route(member, admitted.service, admitted.vni, self.address)
            start_msg = tpb.CallStart(
                outer=tpb.OuterHeader(vni=r.vni, src_host=r.src_host, dst_host=r.dst_host,
                                      fencing_token=r.fencing_token),
                inner=tpb.InnerHeader(network=self.attachment.network, src=self.attachment.address, dst=r.dst,
                                      dst_port=r.dst_port, request_id=request_id, idempotent=call.idempotent,
                                      deadline_ms=int((time.time() + left) * 1000)),
                method=method, metadata=entries, traceparent=traceparent)
            refused = False
            try:
                return await self._attempt(member.host_address, start_msg, call, context, left)
            except _Refused as exc:
                log.debug("call %d refused before its VM saw it: %s %s", request_id, exc.code.name, exc.details)
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:  # the service's VMs take no calls: all alike
                    raise error_for_status(Status.UNIMPLEMENTED, exc.details) from None
                if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:  # it queued past its deadline: no time left
                    raise DeadlineExceeded(f"call {request_id} reached its deadline before a producer VM took it "
                                           "(it was not run)") from None
                refused = True
                last = Retry(Happened.REFUSED)
            except _Failed as exc:
                log.debug("call %d: %s (%s)", request_id, exc.happened.value, exc)
                # the tunnel broke after the start was sent: the VM may have begun it, accepted or not
                decision = verdict(exc.happened, call.may_retry_after_start(), request_id,
                                   why_not=call.why_not_retried())
                if isinstance(decision, Refusal):
                    raise decision.exception() from None
                last = decision
            finally:
                self.pools.put_back(pool, member, refused=refused)
            call.accepted.clear()
        assert last is not None
        raise out_of_attempts(last, request_id, self.max_attempts).exception()

    async def _attempt(self, host: str, start_msg: tpb.CallStart, call: _Call, context: grpc.aio.ServicerContext,
                       left: float) -> str:
        """One attempt on one VM: the VM's status name once the caller has it, or _Refused / _Failed."""
        client = self.tunnels.to(host)
        if not await client.ready():
            raise _Failed(Happened.NOT_DELIVERED, f"cannot connect to producer host {host}")
        tunnel = client.call(left + DEADLINE_MARGIN_S)
        pump: asyncio.Task[None] | None = None
        try:
            try:
                # the CallStart with what the caller already sent (a replay, or what the reader has)
                up = tpb.CallUp(start=start_msg, messages=call.replay)
                _take_ready(call, up)
                await tunnel.write(up)
                if call.client_done:
                    await tunnel.done_writing()
                else:
                    pump = asyncio.get_running_loop().create_task(_pump(call, tunnel))
                while True:
                    down = await tunnel.read()
                    if down is grpc.aio.EOF:
                        raise _Failed(Happened.DELIVERY_UNKNOWN, f"the call's tunnel stream to {host} ended early")
                    if down.accepted:
                        call.accepted.set()
                    if down.HasField("headers"):
                        call.answered = True
                        await context.send_initial_metadata(to_grpc_metadata(down.headers.metadata))
                    for message in down.messages:
                        call.answered = True
                        call.responses += 1
                        await context.write(message)
                    if down.HasField("end"):
                        return await self._end(down.end, call, context)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                if REFUSED_STREAM in why:  # HTTP/2: the producer host did not process the stream at all
                    raise _Failed(Happened.NOT_DELIVERED, f"{host} refused the call's stream: {why}") from None
                raise _Failed(Happened.DELIVERY_UNKNOWN, f"the call's tunnel stream to {host} broke: {why}") from None
        finally:
            if pump is not None:
                pump.cancel()
            tunnel.cancel()  # a no-op once it ended; our caller's cancel otherwise

    async def _end(self, end: tpb.CallEnd, call: _Call, context: grpc.aio.ServicerContext) -> str:
        code = STATUS_BY_NUMBER.get(end.code, grpc.StatusCode.UNKNOWN)
        if not call.accepted.is_set():
            raise _Refused(code, end.details)
        if end.broken:
            raise _Failed(Happened.DELIVERY_UNKNOWN, f"its VM's server went away: {end.details}")
        context.set_trailing_metadata(to_grpc_metadata(end.trailing_metadata))
        if code != grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(end.details)
        return code.name


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


async def _read_caller(request_iterator: AsyncIterator[bytes], inbox: asyncio.Queue[bytes | None]) -> None:
    """The caller's messages, one at a time: the queue holds one, so a caller that sends faster than
    the VM takes is held back by HTTP/2 flow control, not by our memory."""
    async for message in request_iterator:
        await inbox.put(message)
    await inbox.put(None)  # not in `finally`: a cancelled reader must not block again on a full queue


def _add(call: _Call, up: tpb.CallUp, message: bytes | None) -> None:
    """One of the caller's messages (None: its end) into `up`, kept for a replay while one may be needed."""
    if message is None:
        call.client_done = up.half_close = True
    else:
        call.keep(message)
        up.messages.append(message)


def _take_ready(call: _Call, up: tpb.CallUp) -> None:
    """Into `up`, the caller's messages (and its end) already read, without waiting for more (the
    buffer's bound holds: before `accepted` the pump waits while it is full)."""
    while not call.client_done and not call.inbox.empty() and (call.accepted.is_set() or not call.full()):
        _add(call, up, call.inbox.get_nowait())


async def _pump(call: _Call, tunnel: grpc.aio.StreamStreamCall) -> None:
    """The caller's messages to the current attempt as they come, kept for a replay while one may
    be needed. Before `accepted`, a full buffer stops the reading until `accepted` comes."""
    try:
        while not call.client_done:
            if not call.accepted.is_set() and call.full():
                await call.accepted.wait()
            up = tpb.CallUp()
            _add(call, up, await call.inbox.get())
            _take_ready(call, up)  # nothing more once the end is in
            await tunnel.write(up)
        await tunnel.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the tunnel call ended: the attempt's reader says how


class _Handler(grpc.GenericRpcHandler):
    MAX_METHODS = 256  # handlers kept per endpoint (making one costs more than a small call's work)

    def __init__(self, calls: VipCalls) -> None:
        self.calls = calls
        self._by_method: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = self._by_method.get(method)
        if handler is None:
            if len(self._by_method) >= self.MAX_METHODS:  # a caller inventing method names
                self._by_method.clear()
            # no (de)serializers: the messages stay bytes, whatever the method
            handler = self._by_method[method] = grpc.stream_stream_rpc_method_handler(
                functools.partial(self.calls.handle, method))
        return handler


class VipServers:
    """Every VIP endpoint's server, started and drained together."""

    def __init__(self, calls: list[VipCalls], max_calls: int) -> None:
        self.calls = calls
        self.max_calls = max_calls  # calls in flight per endpoint (SPEC §10: bounded)
        self.servers: list[grpc.aio.Server] = []

    async def start(self) -> None:
        for calls in self.calls:
            server = grpc.aio.server(options=SERVER_OPTIONS, maximum_concurrent_rpcs=self.max_calls)
            server.add_generic_rpc_handlers((_Handler(calls),))
            e = calls.endpoint
            path = e.socket_path
            if path is not None:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                port = server.add_insecure_port(e.listen)
            except RuntimeError:
                port = 0
            if not port:
                raise OSError(f"cannot listen on VIP endpoint {e.listen} of consumer VM {e.vm}")
            if path is not None:
                os.chmod(path, e.mode)  # before start: nobody can have connected yet
            await server.start()
            self.servers.append(server)
            log.info("VIP endpoint %s: consumer VM %s reaches %s", e.listen, e.vm, e.target)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let the calls in flight finish within `grace_s`."""
        await asyncio.gather(*(s.stop(grace_s) for s in self.servers))
        self.servers.clear()
