"""What every leasenet gRPC server and client shares: the error edge (LeasenetError -> status with
its sentence, anything else -> INTERNAL with a generic sentence and a logged traceback), standard
health checking and reflection, channel options, and parsing of host:port lists.

Servers and channels take the process's TLS material (wire.tls): given it, the server requires a
client certificate from the cluster CA on its one port (health and reflection included) and a
channel presents ours and checks the server's kind; None is plaintext, chosen with --insecure only."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from wire import metrics, version
from wire import tls as wtls
from wire.channels import CHANNEL_OPTIONS, health_aware, SERVER_KINDS, channel, check_health
from wire.errors import ERROR_METADATA_KEY, LeasenetError, Status, error_for_status
from wire.limits import MAX_MESSAGE_BYTES
from wire.tls import TlsMaterial

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_GRPC_BY_STATUS = {Status(code.value[0]): code for code in grpc.StatusCode}
# --- message limits (issues 11 and 12) ----------------------------------------------------------
# gRPC's receive limit, named and set on every channel and server: wire/limits.py derives it from the
# payload limit. Nothing that grows with the fleet is sent in one message: lists are paginated (a page
# stops at PAGE_BUDGET_BYTES whatever its page_size), the replica's snapshot is read in ranges of keys
# (mapping/store/base.py), so the limit holds at 10,000 VMs and beyond.
PAGE_BUDGET_BYTES = MAX_MESSAGE_BYTES // 4
# -------------------------------------------------------------------------------------------------
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]


def to_grpc(status: Status) -> grpc.StatusCode:
    return _GRPC_BY_STATUS[status]


def from_grpc(code: grpc.StatusCode) -> Status:
    return Status(code.value[0])


def is_ours(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a leasenet server failed the call on purpose (its error's type in the trailers)."""
    return any(k == ERROR_METADATA_KEY for k, _ in exc.trailing_metadata() or ())


def error_from_rpc(exc: grpc.aio.AioRpcError, peer: str) -> LeasenetError:
    """The typed error a failed call to `peer` stands for. A leasenet server names the type in the
    trailing metadata and its details are our sentence; without the name the details are grpc's or a
    foreign server's text, which goes to the log (`detail`), never on to a consumer VM."""
    status = from_grpc(exc.code())
    name = next((str(v) for k, v in exc.trailing_metadata() or () if k == ERROR_METADATA_KEY), None)
    if name is not None:
        return error_for_status(status, exc.details() or status.name, name)
    err = error_for_status(status, f"{peer} failed the call with {status.name}")
    err.detail = exc.details() or ""
    return err


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str, kind: str) -> None:
    if isinstance(exc, LeasenetError):
        if kind:
            metrics.answered(kind, exc)
        if exc.detail:
            log.info("%s in %s: %s (%s)", type(exc).__name__, method, exc.message, exc.detail)
        # keep what the servicer already set (a traceparent): abort's metadata replaces it
        await context.abort(to_grpc(exc.code), exc.message,
                            trailing_metadata=(*(context.trailing_metadata() or ()),
                                               (ERROR_METADATA_KEY, type(exc).__name__)))
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def edge(fn: F) -> F:
    """Decorate a servicer method: typed errors become their status, cancellation passes through."""
    return _edge(fn, "")


def edge_counting(kind: str) -> Callable[[F], F]:
    """edge(), and each RESOURCE_EXHAUSTED it answers counted for process `kind` by the error's
    reason (wire.metrics.answered): for servicers whose refusals are not counted where raised."""
    return functools.partial(_edge, kind=kind)  # type: ignore[return-value]


def _edge(fn: F, kind: str) -> F:
    name = fn.__name__
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in fn(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await _abort(context, exc, name, kind)
        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, name, kind)
    return unary  # type: ignore[return-value]


async def end_of_stream(reader: asyncio.Task[None], context: grpc.aio.ServicerContext, what: str) -> None:
    """A bidi servicer's response stream ends after its request reader did. If a request on the stream
    could not be parsed, the caller hears so (INVALID_ARGUMENT naming `what`), not a silent OK; any
    other error of the reader is raised again."""
    error = reader.exception() if reader.done() and not reader.cancelled() else None
    if isinstance(error, DecodeError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} could not be parsed; the stream ends here")
    if error is not None:
        raise error


def split_addresses(text: str, what: str, *, hint: str = "") -> list[str]:
    """A comma-separated host:port list, the one parser of address lists (registries, consumer
    hosts, etcd endpoints). `https://host:port` is kept (TLS to etcd); an `http://` prefix, as etcd
    prints its plaintext client URLs, is dropped."""
    addresses = [a.strip().removeprefix("http://") for a in text.split(",") if a.strip()]
    if not addresses:
        raise ValueError(f"no {what} address given" + (f" ({hint})" if hint else ""))
    for a in addresses:
        host, sep, port = a.removeprefix("https://").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{what} address {a!r} is not host:port or https://host:port")
    return addresses


@dataclass(frozen=True, slots=True)
class ServerCaps:
    """How much one server takes at once; None leaves gRPC's default (unbounded). Past
    `concurrent_rpcs`, a new call is refused at once with RESOURCE_EXHAUSTED; past
    `streams_per_connection`, a client's new stream on that connection waits (HTTP/2)."""

    concurrent_rpcs: int | None = None
    streams_per_connection: int | None = None

    def __post_init__(self) -> None:
        for name in ("concurrent_rpcs", "streams_per_connection"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, not {value}")


class _Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc's health service, our version in its answers' initial metadata (`leasenet health` shows it)."""

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await context.send_initial_metadata(version.metadata())
        return await super().Check(request, context)


class Server:
    """A grpc.aio server with health checking and reflection, started and stopped as a unit."""

    def __init__(self, listen: str, tls: TlsMaterial | None = None, caps: ServerCaps = ServerCaps()) -> None:
        self.listen = listen
        self.tls = tls  # None: plaintext (--insecure)
        options = list(SERVER_OPTIONS)
        if caps.streams_per_connection is not None:
            options.append(("grpc.max_concurrent_streams", caps.streams_per_connection))
        self.server = grpc.aio.server(options=options, maximum_concurrent_rpcs=caps.concurrent_rpcs)
        self.health = _Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services: list[str] = [reflection.SERVICE_NAME, health.SERVICE_NAME]
        self.port = 0

    def add(self, adder: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        adder(servicer, self.server)
        self._services.append(full_name)

    async def start(self, serving: bool = True) -> str:
        """Bind and start; returns the bound host:port (useful with port 0)."""
        reflection.enable_server_reflection(self._services, self.server)
        try:
            if self.tls is None:
                self.port = self.server.add_insecure_port(self.listen)
            else:
                self.port = self.server.add_secure_port(self.listen, wtls.server_credentials(self.tls))
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise OSError(f"cannot listen on {self.listen} (address in use or not local)")
        await self.server.start()
        await self.set_serving(serving)
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self._services]:
            result = self.health.set(name, status)
            if inspect.isawaitable(result):
                await result

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.server.stop(grace_s)


def install_event_loop() -> str:
    """Use uvloop's event loop (a dependency on Linux; elsewhere when installed) unless
    LEASENET_UVLOOP=0: 10-25% less CPU per stream message (bench/PROFILE.md). Call before the
    loop starts. Returns what the process will run on: 'uvloop <version>' or 'asyncio' (what every
    bench table reports)."""
    if os.environ.get("LEASENET_UVLOOP", "1").strip().lower() in ("0", "false", "no"):
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return f"uvloop {uvloop.__version__}"


# CHANNEL_OPTIONS, health_aware, SERVER_KINDS, channel and check_health live in wire.channels; named here as before
__all__: Sequence[str] = ["CHANNEL_OPTIONS", "health_aware", "SERVER_KINDS", "Server", "ServerCaps", "edge", "edge_counting", "channel",
                          "check_health", "end_of_stream",
                          "error_from_rpc", "from_grpc",
                          "install_event_loop", "split_addresses", "to_grpc"]
