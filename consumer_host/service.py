"""The consumer host process (`leasenet consumer-host`): the VM-facing API and the request path
of SPEC §3, from admission to the reverse rewrite of the answer's source."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from consumer_host.config import Limits, VipEndpoint, plaintext
from consumer_host.datapath import Admitted, Attachment, PoolVm, admit, answer_source, attached, route
from consumer_host.gate import TokenGate, source_of
from consumer_host.pools import PoolManager
from consumer_host.registry_client import RegistryClient
from consumer_host.failover import Happened, Retry, out_of_attempts, verdict
from consumer_host.sentences import producer_answer
from consumer_host.tokens import Throttle
from consumer_host.tunnel import TunnelFailure, Tunnels
from consumer_host.vip import VipCalls, VipServers
from wire import metrics, version
from wire.lifecycle import Step, cancel_all, shut_down
from wire.limits import payload_too_large
from wire.rpc import Server, edge_counting, end_of_stream
from wire.v1 import consumer_pb2 as pb
from wire.v1 import consumer_pb2_grpc as pb_grpc
from wire.v1 import tunnel_pb2 as tpb
from wire.errors import (
    InvalidRequest,
    LeasenetError,
    Overloaded,
    Status,
)
from mapping.liveness import Liveness
from mapping.model import Host, HostId, HostKind, Network, Record, Service, VmId, vm_id
from mapping.ownership import owner_address
from mapping.replica import Replica
from mapping.scopes import watch_prefixes
from mapping.store import Store
from wire.otel import OtelSpans
from wire.tls import TlsMaterial
from wire.trace import CURRENT, NO_SPANS, TRACEPARENT, Spans, TraceParent, bind, parse, start
from wire.verdict import Refusal

log = logging.getLogger(__name__)

MAX_TEMPLATES = 4096
DEADLINE_MARGIN_S = 0.05
DRAIN_S = 2.0  # at shutdown, requests in flight get this long to finish
# at shutdown, between saying NOT_SERVING and stopping the server: clients that watch our health
# (wire.channels.health_aware) stop sending first, so no call is pending in gRPC when the server stops (it
# would answer CANCELLED, though the call never reached us: grpc/grpc#41785)
HEALTH_NOTICE_S = 0.5
KIND = "consumer_host"
REQUESTS = metrics.Requests(KIND)
UNADMITTED = "unknown"  # the service label of a request refused before its target named a service


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    host_id: HostId
    listen: str
    advertise: str
    registries: list[str]
    attachments: dict[VmId, Attachment]
    default_deadline_s: float = 10.0
    max_attempts: int = 3
    liveness_ttl_s: int = 3
    limits: Limits = Limits()
    tls: TlsMaterial | None = field(default=None, repr=False)  # None: plaintext (--insecure)
    otlp_endpoint: str = ""  # export spans (admit, acquire, exchange) here; "" = trace ids in logs only
    vips: tuple[VipEndpoint, ...] = ()  # local endpoints standing for target VIPs (consumer_host/vip.py)


class _Retry(Exception):
    """This attempt cannot have run on a producer VM: try another one."""

    def __init__(self, retry: Retry) -> None:
        super().__init__(retry.happened.value)
        self.retry = retry


class RequestPath:
    """SPEC §3 for one request, steps 1-12. The decisions are datapath's; this does the I/O.

    Two memos keep the hot path short (bench/PROFILE.md): admission verdicts, which hold until a
    network or service changes (attachments are fixed at start; refusals are never kept), and a
    frame template per pool member, whose route never changes (a member is one claim on one VM).
    An admission verdict is kept only for a token that verified (consumer_host/gate.py).

    `source` is the caller's address (the gRPC peer, without its port): wrong tokens are throttled
    per source."""

    def __init__(self, config: ConsumerConfig, replica: Replica, pools: PoolManager, tunnels: Tunnels,
                 spans: Spans = NO_SPANS) -> None:
        self.config = config
        self.spans = spans
        self.replica = replica
        self.pools = pools
        self.tunnels = tunnels
        self.address = config.advertise
        self._admitted: dict[tuple[str, str, str, str], Admitted] = {}
        limits = config.limits
        self.gate = TokenGate(Throttle(limits.bad_tokens, block_s=limits.bad_token_block_s), limits.token_checks)
        self._in_flight: dict[VmId, int] = {}  # per consumer VM; bounded by the attachments
        self._templates: dict[PoolVm, tpb.Frame] = {}
        replica.subscribe(self._on_change)

    def _on_change(self, key: str, old: Record | None, new: Record | None, revision: int) -> None:
        if isinstance(old, (Network, Service)) or isinstance(new, (Network, Service)):
            self._admitted.clear()

    async def _admit(self, req: pb.SendRequest, source: str = "") -> Admitted:
        """Step 1 (datapath.attached, the token gate, datapath.admit), remembered per (network,
        src, token, target) once the token verified."""
        key = (req.network, req.src, req.token, req.target)
        admitted = self._admitted.get(key)
        if admitted is None:
            attachment = await self.attachment(req.network, req.src, req.token, source)
            verdict = admit(attachment, self.replica.state, req.target)
            if isinstance(verdict, Refusal):
                raise verdict.exception()
            admitted = self._admitted[key] = verdict
        return admitted

    async def attachment(self, network: str, address: str, token: str, source: str = "") -> Attachment:
        """The attached consumer VM whose token this is (Attach, Detach and step 1)."""
        verdict = attached(self.config.attachments, network, address)
        if isinstance(verdict, Refusal):
            raise verdict.exception()
        await self.gate.check(verdict, token, source)
        return verdict

    def _frame(self, member: PoolVm, admitted: Admitted, req: pb.SendRequest, remaining: float) -> tpb.Frame:
        """Steps 7-9: the outer header and the rewritten inner destination come from the member's
        template (datapath.route); the rest from the request."""
        template = self._templates.get(member)
        if template is None:
            if len(self._templates) >= MAX_TEMPLATES:  # members come and go with leases
                self._templates.clear()
            r = route(member, admitted.service, admitted.vni, self.address)
            template = self._templates[member] = tpb.Frame(
                outer=tpb.OuterHeader(vni=r.vni, src_host=r.src_host, dst_host=r.dst_host,
                                      fencing_token=r.fencing_token),
                inner=tpb.InnerHeader(dst=r.dst, dst_port=r.dst_port))
        frame = tpb.Frame()
        frame.CopyFrom(template)  # a third of the CPU of building the nested messages anew
        inner = frame.inner
        inner.network, inner.src, inner.src_port = req.network, req.src, req.src_port
        inner.request_id, inner.idempotent = req.request_id, req.idempotent
        inner.deadline_ms = int((time.time() + remaining) * 1000)
        frame.payload = req.payload
        return frame

    async def forward(self, req: pb.SendRequest, deadline: float, caller: str | None = None,
                      tell_caller: Callable[[TraceParent], None] | None = None, source: str = "") -> pb.SendResponse:
        """One request as one trace, counted and timed by its service and status (wire/metrics.py).
        The trace continues the caller's traceparent, or is a new one; `tell_caller` hears ours before
        the work starts (so an error answer carries it too), and log records written for the request
        carry its trace id and request id. Step 1's verdict is looked up once; only a request refused
        before it is looked up again, for its label. One method, not a wrapper around another: each
        await layer is a coroutine frame per request."""
        parent = parse(caller) if caller and self.spans.enabled else None
        with self.spans.span("request", parent) as span:
            trace = span or start(caller)
            if tell_caller is not None:
                tell_caller(trace)
            token = bind(trace.trace_id, req.request_id)
            began, code, service = time.perf_counter(), Status.INTERNAL.name, ""
            try:
                if (too_large := payload_too_large(len(req.payload))) is not None:
                    raise InvalidRequest(too_large)
                with self.spans.span("admit"):
                    admitted = (self._admitted.get((req.network, req.src, req.token, req.target))
                                or await self._admit(req, source))
                service = admitted.service.name
                response = await self._forward(admitted, req, deadline, trace)
                code = Status.OK.name
                log.debug("request %d from %s/%s to %s: OK", req.request_id, req.network, req.src, req.target)
                return response
            except LeasenetError as exc:
                code = exc.code.name
                log.debug("request %d from %s/%s to %s: %s %s", req.request_id, req.network, req.src, req.target,
                          exc.code.name, exc.message)
                raise
            except asyncio.CancelledError:
                code = Status.CANCELLED.name
                raise
            finally:
                if not service:  # refused before admission: the label of an earlier verdict, if any
                    earlier = self._admitted.get((req.network, req.src, req.token, req.target))
                    service = earlier.service.name if earlier else UNADMITTED
                REQUESTS.record(service, code, time.perf_counter() - began)
                CURRENT.reset(token)

    async def _forward(self, admitted: Admitted, req: pb.SendRequest, deadline: float,
                       trace: TraceParent | None) -> pb.SendResponse:
        """Steps 2-12 for an admitted request, within the consumer VM's bound on requests in flight."""
        vm = admitted.attachment.vm_id
        in_flight = self._in_flight.get(vm, 0)
        if in_flight >= self.config.limits.vm_requests:
            raise Overloaded(f"consumer VM {admitted.attachment.address} already has {in_flight} requests in flight, "
                             "its limit; try again when some are answered", reason="vm_requests")
        self._in_flight[vm] = in_flight + 1
        try:
            answer = await self._attempt(admitted, req, deadline, trace)
        except _Retry:
            # only now pay for tenacity: its per-call set-up was half of this method's CPU when every
            # request built one (bench/PROFILE.md); first attempts are the hot path
            answer = await self._retry(admitted, req, deadline, trace)
        finally:
            if (left := self._in_flight[vm] - 1) > 0:
                self._in_flight[vm] = left
            else:
                del self._in_flight[vm]
        vip, port = answer_source(admitted.service)
        return pb.SendResponse(src=vip, src_port=port, dst=req.src, payload=answer.payload, request_id=req.request_id)

    async def _retry(self, admitted: Admitted, req: pb.SendRequest, deadline: float,
                     trace: TraceParent | None) -> tpb.Frame:
        """Attempts 2..max_attempts on other VMs, after a short jittered pause each (tenacity)."""
        retrying = AsyncRetrying(stop=stop_after_attempt(max(1, self.config.max_attempts - 1)),
                                 wait=wait_random(0, 0.01), retry=retry_if_exception_type(_Retry), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(admitted, req, deadline, trace)
        except _Retry as exc:
            raise out_of_attempts(exc.retry, req.request_id, self.config.max_attempts).exception() from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(self, admitted: Admitted, req: pb.SendRequest, deadline: float,
                       trace: TraceParent | None) -> tpb.Frame:
        with self.spans.span("acquire"):
            pool, member = await self.pools.acquire(admitted, deadline)
        remaining = deadline - time.monotonic()
        frame = self._frame(member, admitted, req, remaining)
        try:
            with self.spans.span("exchange") as span:  # the producer host's spans are its children
                if trace is not None:
                    frame.traceparent = (span or trace).header()
                answer = await self.tunnels.to(member.host_address).exchange(frame, remaining)
        except TunnelFailure as exc:  # its text names the producer host: for our log only
            self.pools.put_back(pool, member)
            log.debug("request %d: %s (%s)", req.request_id, exc.happened.value, exc)
            raise self._failover(exc.happened, req) from None
        except BaseException:
            self.pools.put_back(pool, member)
            raise
        code = Status.of(answer.status_code)
        refused = code not in (Status.OK, Status.DEADLINE_EXCEEDED) and not answer.delivered
        self.pools.put_back(pool, member, refused=refused)
        if code is Status.OK:
            return answer
        if refused:  # the producer host refused the frame before the VM saw it: another VM may take it
            log.debug("request %d refused: %s %s", req.request_id, code.name, answer.status_message)
            raise self._failover(Happened.REFUSED, req)
        # the producer host's sentence is for our log; the consumer VM gets one that names nothing internal
        log.debug("request %d answered %s: %s", req.request_id, code.name, answer.status_message)
        raise producer_answer(code, answer.status_message, req.request_id)

    @staticmethod
    def _failover(happened: Happened, req: pb.SendRequest) -> Exception:
        """SPEC §6 by failover.verdict: _Retry to try another VM, or the error to answer with."""
        decision = verdict(happened, req.idempotent, req.request_id)
        return _Retry(decision) if isinstance(decision, Retry) else decision.exception()


class ConsumerHostServicer(pb_grpc.ConsumerHostServicer):
    def __init__(self, path: RequestPath) -> None:
        self.path = path

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return time.monotonic() + self.path.config.default_deadline_s
        # finish a little early, so the caller gets our sentence rather than its own DEADLINE_EXCEEDED
        return time.monotonic() + remaining - min(DEADLINE_MARGIN_S, remaining * 0.1)

    @edge_counting(KIND)  # each RESOURCE_EXHAUSTED answer counted here, by the error's reason
    async def Attach(self, request: pb.AttachRequest, context: grpc.aio.ServicerContext) -> pb.AttachResponse:
        a = await self.path.attachment(request.network, request.address, request.token, source_of(context.peer()))
        network = self.path.replica.state.networks.get(a.network)
        return pb.AttachResponse(network=a.network, address=a.address, vni=network.vni if network else 0)

    @edge_counting(KIND)
    async def Detach(self, request: pb.DetachRequest, context: grpc.aio.ServicerContext) -> pb.DetachResponse:
        a = await self.path.attachment(request.network, request.address, request.token, source_of(context.peer()))
        return pb.DetachResponse(released_leases=await self.path.pools.release_all(a.vm_id))

    @edge_counting(KIND)
    async def Send(self, request: pb.SendRequest, context: grpc.aio.ServicerContext) -> pb.SendResponse:
        def tell_caller(trace: TraceParent) -> None:  # trailing metadata: OK and error answers alike
            context.set_trailing_metadata(((TRACEPARENT, trace.header()),))

        return await self.path.forward(request, self._deadline(context), _traceparent(context), tell_caller,
                                       source_of(context.peer()))

    async def SendStream(self, request_iterator: AsyncIterator[pb.SendRequest],
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SendResponse]:
        """Many requests on one stream; each gets exactly one response, OK or with its status.
        Bounded (SPEC §10): past `limits.stream_requests` in flight a request is answered
        RESOURCE_EXHAUSTED at once; answers the caller does not read fill `out`, and then nothing
        more is read from the stream (gRPC's flow control holds the caller back)."""
        limit = self.path.config.limits.stream_requests
        source = source_of(context.peer())
        out: asyncio.Queue[pb.SendResponse | None] = asyncio.Queue(maxsize=limit)
        tasks: set[asyncio.Task[None]] = set()
        caller = _traceparent(context)  # the stream's: each request on it is a span of that trace

        async def one(req: pb.SendRequest) -> None:
            try:
                resp = await self.path.forward(req, time.monotonic() + self.path.config.default_deadline_s, caller,
                                               source=source)
            except LeasenetError as exc:
                resp = _refused(req, exc)
            except Exception:
                log.exception("request %d failed", req.request_id)
                resp = _refused(req, LeasenetError("internal error; see the consumer host log"))
            await out.put(resp)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    if len(tasks) >= limit:
                        await out.put(_refused(req, Overloaded(
                            f"this stream already has {limit} requests in flight, its limit; request "
                            f"{req.request_id} was not sent", reason="stream_requests")))
                        continue
                    task = asyncio.get_running_loop().create_task(one(req))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:  # also when a message cannot be parsed: answer what was taken, then end the stream
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
                await out.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (resp := await out.get()) is not None:
                yield resp
            await end_of_stream(reader, context, "a request")
        finally:
            reader.cancel()
            for task in tasks:
                task.cancel()


def _refused(req: pb.SendRequest, error: LeasenetError) -> pb.SendResponse:
    """A SendStream request's error answer (counted like the edge counts a unary one)."""
    metrics.answered(KIND, error)
    return pb.SendResponse(request_id=req.request_id, dst=req.src, status_code=int(error.code),
                           status_message=error.message)


def _traceparent(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's W3C traceparent, from its gRPC metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == TRACEPARENT:
            return value if isinstance(value, str) else None
    return None


async def serve(config: ConsumerConfig, store: Store, *, stop: asyncio.Event,
                ready: Callable[[str], None] | None = None) -> None:
    """The consumer host until `stop` is set. Its long-running tasks live in one task group; the
    shutdown (stop serving, let requests in flight finish, give the leases back, deregister) runs in
    `finally`, so a failed task or a start-up that broke halfway gives the leases back too."""
    replica = Replica(store, prefixes=watch_prefixes(HostKind.CONSUMER, config.host_id))  # its own pools only
    registry = RegistryClient(config.registries, config.tls, owner=lambda service: owner_address(replica.state, service))
    pools = PoolManager(config.host_id, registry, replica, max_waiters=config.limits.pool_waiters)
    tunnels = Tunnels(on_broken=pools.host_broken, tls=config.tls)
    spans = OtelSpans(config.otlp_endpoint, "consumer", config.host_id) if config.otlp_endpoint else NO_SPANS
    path = RequestPath(config, replica, pools, tunnels, spans)
    server = Server(config.listen, config.tls)
    server.add(pb_grpc.add_ConsumerHostServicer_to_server, ConsumerHostServicer(path), "leasenet.v1.ConsumerHost")
    liveness = Liveness(store, config.host_id,
                        lambda: [Host(config.host_id, HostKind.CONSUMER, path.address, version=str(version.ours()))],
                        config.liveness_ttl_s)
    unwatch = [metrics.POOL_VMS.watch(lambda: pools.by_service(lambda pool: len(pool.members))),
               metrics.POOL_VMS_IN_USE.watch(lambda: pools.by_service(lambda pool: len(pool.busy))),
               metrics.POOL_WAITERS.watch(pools.waiters), metrics.TUNNEL_STREAMS.watch(tunnels.open_streams)]
    vips = VipServers([], config.limits.vm_requests)
    async with asyncio.TaskGroup() as tasks:
        background = [tasks.create_task(replica.run(), name="replica")]
        keep_alive: asyncio.Task[None] | None = None
        try:
            await replica.synced.wait()
            await pools.release_leftovers()  # a restart after SIGKILL must not adopt the dead run's leases
            bound = await server.start(serving=False)  # always: `or` would skip it when advertising
            path.address = config.advertise or bound
            await liveness.register()
            keep_alive = tasks.create_task(liveness.keep_alive(), name="liveness")
            # the pool manager's driver: renewals, idle releases and every effect of its pool book
            background += [keep_alive, tasks.create_task(pools.run(), name="pools")]
            vips.calls = [VipCalls(e, config.attachments[e.vm], replica, pools, tunnels, path.address,
                                   max_attempts=config.max_attempts, default_deadline_s=config.default_deadline_s)
                          for e in config.vips]
            await vips.start()
            await server.set_serving(True)
            if unhashed := plaintext(config.attachments):
                log.warning("the config holds the token of %d consumer VM(s) in plain text (%s); replace each "
                            "`token` with `token_hash` from `leasenet token hash`", len(unhashed),
                            ", ".join(unhashed[:5]) + (" ..." if len(unhashed) > 5 else ""))
            log.info("consumer host %s serving %d consumer VM(s) on %s", config.host_id, len(config.attachments),
                     path.address)
            if ready is not None:
                ready(path.address)
            await stop.wait()
            log.info("consumer host %s stopping", config.host_id)
        finally:
            serving = bool(server.port)
            await shut_down([
                Step("stop taking requests", lambda: server.set_serving(False), 1.0) if serving else None,
                Step("let the clients watching our health see it", lambda: asyncio.sleep(HEALTH_NOTICE_S),
                     HEALTH_NOTICE_S + 0.5) if serving else None,
                Step("stop the VIP endpoints, letting their calls finish", lambda: vips.stop(DRAIN_S), DRAIN_S + 1.0)
                if vips.servers else None,
                Step("let the requests in flight finish", lambda: server.stop(DRAIN_S), DRAIN_S + 1.0)
                if serving else None,
                Step("give every lease back", pools.release_all),
                Step("deregister", lambda: liveness.deregister(keep_alive), 2.0) if liveness.registrations else None,
                Step("close the tunnels", tunnels.close, 2.0),
                Step("close the channels to the leasing agents", registry.close, 2.0),
                Step("export the last spans", lambda: asyncio.to_thread(spans.close), 6.0) if spans.enabled else None,
            ])
            cancel_all(background)
            for undo in unwatch:
                undo()
