"""The Store over etcd v3, through etcd3aio (pinned). Traps handled here, once:
- etcd3aio retries on DEADLINE_EXCEEDED/UNAVAILABLE, also writes: transactions use max_attempts=1;
- after `import etcd3aio`, its bundled protos sit early on sys.path: we only import its public names
  and `_protobuf` for the Compare message;
- its watch reconnects forever on transient errors and never surfaces compaction: we check
  `compact_revision` and `canceled` ourselves;
- over TLS it dials `ipv4:a,b,c`, so no single host name can be verified: members are checked by the
  name every etcd certificate carries (etcd.leasenet, see wire/tls.py) instead of their addresses;
- with etcd auth on, a refused write is PERMISSION_DENIED (not retried): it surfaces as our
  PermissionDenied with a sentence, not as StoreUnavailable;
- a range at a compacted revision fails with OUT_OF_RANGE: it surfaces as Compacted (a paged
  snapshot starts again);
- a watch resuming far behind gets up to 1,000 revisions in one message (etcd's watchBatchMaxRevs),
  e.g. a 16,000-VM registration: the channel accepts ETCD_MAX_RECEIVE_BYTES, and a backlog larger
  still surfaces as BacklogTooLarge (reload in pages) instead of a watch retried forever;
- its lease keep-alives open a stream per lease: every refresh goes over one stream of ours instead
  (etcd_keepalive.py), set up with its lease stub;
- its transaction helpers build each compare and operation as a message of its own, copied into
  the request twice (a grant's transaction cost 0.2 ms of CPU to build): transactions are built in
  place (`_txn`) and sent through its KV service's `_rpc` (its retries and error mapping).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import grpc.aio

import etcd3aio
from etcd3aio import Etcd3Client, EtcdError, EtcdPermissionDeniedError, EtcdUnauthenticatedError, prefix_range_end
from etcd3aio._protobuf import Compare, TxnRequest, TxnResponse
from etcd3aio.kv import KVService
from wire import metrics
from wire.errors import PermissionDenied, StoreUnavailable, Unauthenticated
from wire.tls import Kind, TlsConfigError, TlsMaterial, server_name
from wire.rpc import MAX_MESSAGE_BYTES
from mapping.store.base import (SNAPSHOT_PAGE_KEYS, BacklogTooLarge, Compacted, KeyValue, Page, Require, Snapshot,
                                TxnResult, WatchBatch, WatchEvent, check_txn_size, paged_snapshot)
from mapping.store.etcd_keepalive import KeepAliveStream

log = logging.getLogger(__name__)

_DELETE = 1  # mvccpb.Event.DELETE

# What one etcd answer may weigh: a watch catching up gets up to 1,000 revisions (of up to 128 keys)
# at once; etcd's own Go client accepts any size. Snapshots and lists never come near it (pages).
ETCD_MAX_RECEIVE_BYTES = 16 * MAX_MESSAGE_BYTES


HTTPS = "https://"


def _tls_args(endpoints: Sequence[str], tls: TlsMaterial | None) -> dict[str, bytes | str]:
    """etcd3aio's TLS arguments: TLS whenever credentials are given; https:// demands them."""
    if tls is None:
        secure = [e for e in endpoints if e.startswith(HTTPS)]
        if secure:
            raise TlsConfigError(f"etcd endpoint {secure[0]} needs TLS credentials (--tls-dir, or --tls-cert, "
                                 "--tls-key and --tls-ca)")
        return {}
    return {"ca_cert": tls.ca, "cert_key": tls.key, "cert_chain": tls.cert, "tls_server_name": server_name(Kind.ETCD)}


def resolve_endpoint(endpoint: str) -> str:
    """host:port with the host as an IPv4 literal (docker service names become container IPs)."""
    host, _, port = endpoint.rpartition(":")
    try:
        ipaddress.IPv4Address(host)
        return endpoint
    except ValueError:
        pass
    try:
        return f"{socket.getaddrinfo(host, int(port), socket.AF_INET)[0][4][0]}:{port}"
    except OSError as exc:
        raise StoreUnavailable(f"cannot resolve etcd endpoint {endpoint}: {exc}") from None


class _unavailable_on_failure:  # noqa: N801 - used as a context manager, like the contextlib ones
    """Map the client's failures to the project's StoreUnavailable, with a sentence; count and time
    the request (`timed` False: a stream, whose lifetime is no latency). A class, not a generator:
    every etcd request of a grant's path goes through it."""

    __slots__ = ("operation", "op", "timed", "start")

    def __init__(self, operation: str, *, timed: bool = True) -> None:
        self.operation = operation
        self.op = _op_metrics(operation)
        self.timed = timed

    def __enter__(self) -> None:
        self.op.requests.inc()
        self.start = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        try:
            if exc is not None:
                with _failures_mapped(self.operation):
                    raise exc
            return False
        except (StoreUnavailable, PermissionDenied, Unauthenticated):
            self.op.errors.inc()
            raise
        finally:
            if self.timed:
                self.op.duration.observe(time.perf_counter() - self.start)


@functools.cache
def _op_metrics(operation: str) -> metrics.EtcdOp:
    return metrics.etcd_op(operation.replace(" ", "_").replace("-", ""))


@contextlib.contextmanager
def _failures_mapped(operation: str) -> Iterator[None]:
    """The client's failures as the project's StoreUnavailable (or a refusal), with a sentence."""
    try:
        yield
    except (EtcdPermissionDeniedError, EtcdUnauthenticatedError) as exc:
        raise _refused(operation, exc) from exc
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            raise _refused(operation, exc) from exc
        raise StoreUnavailable(f"etcd is unavailable ({operation}: {exc.details()})") from exc
    except (EtcdError, TimeoutError, OSError) as exc:
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc) or type(exc).__name__
        raise StoreUnavailable(f"etcd is unavailable ({operation})", detail=detail) from exc


def _refused(operation: str, exc: Exception) -> PermissionDenied | Unauthenticated:
    """etcd's RBAC said no: this process's certificate (its CN is the etcd user) may not do this."""
    denied = isinstance(exc, EtcdPermissionDeniedError) or (
        isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.PERMISSION_DENIED)
    if denied:
        what = "read" if operation in ("range", "watch", "snapshot") else "write"
        return PermissionDenied(f"etcd refused {operation}: this process's etcd user may not {what} there")
    return Unauthenticated(f"etcd refused {operation}: the certificate names no etcd user")


_CREATE = Compare.CREATE


def _txn_request(require: Sequence[Require], *, absent: Sequence[str] = (), puts: Sequence[tuple[str, bytes]] = (),
                 lease: int = 0, deletes: Sequence[str] = ()) -> TxnRequest:
    """If every key in `absent` was never created (create revision 0) and every guard holds, put
    `puts` (on `lease`) and delete `deletes`, in that order; built in place."""
    request = TxnRequest()
    for key, revision in [*((k, 0) for k in absent), *((r.key, r.create_revision) for r in require)]:
        compare = request.compare.add()
        compare.target = _CREATE
        compare.key = key.encode()
        compare.create_revision = revision  # set even when 0: the oneof says which revision is compared
    for key, value in puts:
        put = request.success.add().request_put
        put.key = key.encode()
        put.value = value
        put.lease = lease
    for key in deletes:
        request.success.add().request_delete_range.key = key.encode()
    return request


def _event(kind: int, kv: object) -> WatchEvent:
    # the tuple made directly: a NamedTuple's __new__ is a Python function, and this runs for every event
    return tuple.__new__(WatchEvent, (kv.key.decode(), None if kind == _DELETE else kv.value,  # type: ignore
                                      kv.create_revision, kv.mod_revision))  # type: ignore[attr-defined]


def _kv(kv: object) -> KeyValue:
    return KeyValue(key=kv.key.decode(), value=kv.value, create_revision=kv.create_revision,  # type: ignore[attr-defined]
                    mod_revision=kv.mod_revision, lease=kv.lease)  # type: ignore[attr-defined]


class EtcdStore:
    def __init__(self, endpoints: Sequence[str], *, timeout_s: float = 3.0, tls: TlsMaterial | None = None) -> None:
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.requests = 0
        # etcd3aio dials `ipv4:a,b,c` (round robin over all members), which takes IP literals only
        self._client = Etcd3Client([resolve_endpoint(e.removeprefix(HTTPS)) for e in self.endpoints], rpc_max_attempts=2,
                                   watch_reconnect_backoff_seconds=0.1, watch_max_reconnect_backoff_seconds=1.0,
                                   **_tls_args(self.endpoints, tls))  # type: ignore[arg-type]
        # reconnect within a second once etcd is back (gRPC's default backoff grows to minutes)
        self._client._manager.grpc_options += [("grpc.initial_reconnect_backoff_ms", 100),
                                               ("grpc.max_reconnect_backoff_ms", 1_000),
                                               ("grpc.max_receive_message_length", ETCD_MAX_RECEIVE_BYTES)]
        self._connected = False
        self.keepalive = KeepAliveStream(self._open_keepalive)

    async def connect(self) -> EtcdStore:
        # The channel must be created inside the running loop.
        if not self._connected:
            await self._client.connect()
            self._connected = True
        return self

    async def close(self) -> None:
        self.keepalive.close()
        if self._connected:
            await self._client.close()
            self._connected = False

    @property
    def _kvs(self) -> KVService:
        assert self._client.kv is not None, "EtcdStore.connect() was not awaited"
        return self._client.kv

    async def snapshot(self, prefix: str, *, page_size: int = SNAPSHOT_PAGE_KEYS) -> Snapshot:
        return await paged_snapshot(self, prefix, page_size)

    async def range_page(self, prefix: str, *, after: str = "", revision: int = 0, limit: int) -> Page:
        self.requests += 1
        start = after + "\0" if after else prefix  # the first key after `after`
        with _unavailable_on_failure("range"):
            try:
                resp = await self._kvs.get(start, range_end=prefix_range_end(prefix), revision=revision, limit=limit,
                                           timeout=self.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # "mvcc: required revision has been compacted"
                    raise Compacted(revision) from None
                raise
        return Page(int(resp.header.revision), [_kv(kv) for kv in resp.kvs], bool(resp.more))

    async def get(self, key: str) -> KeyValue | None:
        self.requests += 1
        with _unavailable_on_failure("get"):
            resp = await self._kvs.get(key, timeout=self.timeout_s)
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        self.requests += 1
        with _unavailable_on_failure("put"):
            resp = await self._kvs.put(key, value, lease=lease, timeout=self.timeout_s)
        return int(resp.header.revision)

    async def update(self, key: str, value: bytes, *, lease: int = 0, require: Sequence[Require] = ()) -> TxnResult:
        self.requests += 1
        with _unavailable_on_failure("txn"):
            resp = await self._txn(_txn_request(require, puts=[(key, value)], lease=lease))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def delete(self, key: str, *, require: Sequence[Require] = ()) -> TxnResult:
        self.requests += 1
        with _unavailable_on_failure("delete"):
            resp = await self._txn(_txn_request(require, deletes=[key]))
        deleted = bool(resp.succeeded and resp.responses[0].response_delete_range.deleted)
        return TxnResult(deleted, int(resp.header.revision))

    async def delete_all(self, keys: Sequence[str], *, require: Sequence[Require] = ()) -> TxnResult:
        unique = list(dict.fromkeys(keys))
        check_txn_size([(k, b"") for k in unique], require)
        self.requests += 1
        with _unavailable_on_failure("txn"):
            resp = await self._txn(_txn_request(require, deletes=unique))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def create_all(self, items: Sequence[tuple[str, bytes]], *, lease: int = 0,
                         require: Sequence[Require] = (), puts: Sequence[tuple[str, bytes]] = ()) -> TxnResult:
        check_txn_size(items, require, puts)
        self.requests += 1
        with _unavailable_on_failure("txn"):
            resp = await self._txn(_txn_request(require, absent=[k for k, _ in items], puts=[*items, *puts],
                                                lease=lease))
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def _txn(self, request: TxnRequest) -> TxnResponse:
        """One transaction, never retried (a retried write could apply twice)."""
        kvs = self._kvs
        return await kvs._rpc(kvs._stub.Txn, request, operation="KV.Txn", timeout=self.timeout_s, max_attempts=1)

    async def grant_lease(self, ttl_s: int) -> int:
        self.requests += 1
        assert self._client.lease is not None
        with _unavailable_on_failure("lease grant"):
            resp = await self._client.lease.grant(ttl_s, timeout=self.timeout_s, max_attempts=1)
        return int(resp.ID)

    async def refresh_lease(self, lease_id: int) -> int:
        """One request on the process's one keep-alive stream (not a stream per refresh)."""
        self.requests += 1
        with _unavailable_on_failure("lease keep-alive"):
            return await self.keepalive.refresh(lease_id, self.timeout_s)

    def _open_keepalive(self) -> grpc.aio.StreamStreamCall:
        lease = self._client.lease
        assert lease is not None, "EtcdStore.connect() was not awaited"
        return lease._stub.LeaseKeepAlive(metadata=lease._metadata or None)  # type: ignore[call-arg]

    async def revoke_lease(self, lease_id: int) -> None:
        self.requests += 1
        assert self._client.lease is not None
        with _unavailable_on_failure("lease revoke"):
            try:
                await self._client.lease.revoke(lease_id, timeout=self.timeout_s, max_attempts=1)
            except grpc.aio.AioRpcError as exc:  # NOT_FOUND: already gone, which is what we wanted
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        self.requests += 1
        # etcd3aio retries UNAVAILABLE itself but raises the rest: over TLS a member shutting down ends
        # the stream with RST_STREAM (INTERNAL), which must be a break to resume from, not a crash
        with _unavailable_on_failure("watch", timed=False):
            try:
                async for batch in self._watch(prefix, start_revision):
                    yield batch
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # "larger than max": a bigger backlog
                    raise BacklogTooLarge(start_revision) from None
                raise

    async def _watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchBatch]:
        assert self._client.watch is not None
        streams = 0
        async for resp in self._client.watch.watch(prefix, range_end=prefix_range_end(prefix),
                                                   start_revision=start_revision, progress_notify=True):
            if resp.compact_revision > 0:
                raise Compacted(resp.compact_revision)
            if resp.canceled:
                raise StoreUnavailable(f"etcd cancelled the watch on {prefix}: {resp.cancel_reason}")
            if resp.created:
                # Its header is the store's revision, not a watch position: the catch-up events below
                # it are still to come. A second one means etcd3aio re-created the stream after a
                # break, from a position of its own that may skip events: the caller resumes instead.
                streams += 1
                if streams > 1:
                    raise StoreUnavailable(f"the watch on {prefix} broke and must resume from the caller's revision")
                continue
            yield WatchBatch(resp.header.revision, [_event(ev.type, ev.kv) for ev in resp.events])


async def connect(endpoints: Sequence[str], *, timeout_s: float = 3.0, tls: TlsMaterial | None = None) -> EtcdStore:
    return await EtcdStore(endpoints, timeout_s=timeout_s, tls=tls).connect()


__all__ = ["EtcdStore", "connect", "etcd3aio"]
