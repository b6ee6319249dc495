"""`leasenet leases|hosts|vms|services`: inspection through the registry's gRPC API, as a table,
as JSON (--json), or as a live view (--watch). Lists come in pages (AIP-158): every page is fetched."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.json_format import MessageToDict

from leasenet import security
from wire import version
from wire.tls import Kind
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc

WATCH_PERIOD_S = 1.0
CALL_TIMEOUT_S = 5.0


async def all_pages(call: Callable[..., Awaitable[Any]], request: Any, field: str) -> list[Any]:
    """Every item of a paginated List call: the request again with each next_page_token until none."""
    request = type(request).FromString(request.SerializeToString())  # the caller's request stays as it was
    items: list[Any] = []
    while True:
        response = await call(request, timeout=CALL_TIMEOUT_S, metadata=version.metadata())
        items.extend(getattr(response, field))
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


async def incarnation(stub: pb_grpc.InspectionStub, vm_id: str) -> int:
    """The VM's registered incarnation (its record's revision), 0 while it is not registered."""
    try:
        return (await stub.GetVm(pb.GetRequest(id=vm_id), timeout=CALL_TIMEOUT_S)).revision  # type: ignore[no-any-return]
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # withdrawn while it restarts
            return 0
        raise


async def next_incarnation(stub: pb_grpc.InspectionStub, vm_id: str, old: int, *, within_s: float,
                           poll_s: float) -> float | None:
    """The moment (time.perf_counter) the registry first answers an incarnation of `vm_id` other than
    `old`, i.e. its host registered the VM again after a restart; None past `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await incarnation(stub, vm_id) not in (0, old):
            return time.perf_counter()
        await asyncio.sleep(poll_s)
    return None


def _dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def lease_rows(leases: list[pb.Lease]) -> list[list[str]]:
    return [[l.lease_id, l.service, f"{l.consumer_network}/{l.consumer_vm}", l.consumer_host, str(len(l.members)),
             ", ".join(f"{m.address}@{m.host_id}" for m in l.members)] for l in leases]


LEASE_HEADER = ["POOL", "SERVICE", "CONSUMER VM", "CONSUMER HOST", "SIZE", "MEMBERS"]


def _run(args: argparse.Namespace, fetch: Callable[[pb_grpc.InspectionStub], Awaitable[tuple[list[Any], str]]],
         header: list[str], rows: Callable[[list[Any]], list[list[str]]]) -> None:
    me = security.operator(args)

    async def once_or_watch() -> None:
        async with me.channel(args.registry, Kind.REGISTRY) as channel:
            stub = pb_grpc.InspectionStub(channel)
            while True:
                items, key = await fetch(stub)
                if args.json:
                    print(json.dumps({key: [_dict(i) for i in items]}, indent=None if args.watch else 2), flush=True)
                else:
                    print(table(rows(items), header) if items else f"(no {key})", flush=True)
                if not args.watch:
                    return
                await asyncio.sleep(WATCH_PERIOD_S)
                print(flush=True)

    asyncio.run(once_or_watch())


def cmd_leases(args: argparse.Namespace) -> None:
    request = pb.ListLeasesRequest(service=args.service, consumer_vm=args.consumer_vm,
                                   consumer_host=args.consumer_host, producer_host=args.producer_host)
    if args.watch:
        asyncio.run(_watch_leases(args))
        return

    async def fetch(stub: pb_grpc.InspectionStub) -> tuple[list[Any], str]:
        return await all_pages(stub.ListLeases, request, "leases"), "leases"

    _run(args, fetch, LEASE_HEADER, lease_rows)


async def _watch_leases(args: argparse.Namespace) -> None:
    async with security.operator(args).channel(args.registry, Kind.REGISTRY) as channel:
        stream = pb_grpc.InspectionStub(channel).WatchLeases(pb.WatchLeasesRequest(service=args.service))
        async for event in stream:
            kind = pb.LeaseEvent.Type.Name(event.type)
            if args.json:
                print(json.dumps(_dict(event)), flush=True)
            elif event.type == pb.LeaseEvent.SYNCED:
                print(f"-- synced at revision {event.revision}; live changes follow --", flush=True)
            else:
                row = lease_rows([event.lease])[0]
                print(f"{kind:<8} rev {event.revision:<6} " + "  ".join(row), flush=True)


def cmd_hosts(args: argparse.Namespace) -> None:
    async def fetch(stub: pb_grpc.InspectionStub) -> tuple[list[Any], str]:
        return await all_pages(stub.ListHosts, pb.ListHostsRequest(kind=args.kind), "hosts"), "hosts"

    _run(args, fetch, ["HOST", "KIND", "ADDRESS", "DRAINING", "VERSION"],
         lambda hs: [[h.host_id, h.kind, h.address, "yes" if h.draining else "", h.version or "-"] for h in hs])


def cmd_vms(args: argparse.Namespace) -> None:
    request = pb.ListVmsRequest(service=args.service, host_id=args.host_id, free_only=args.free)

    async def fetch(stub: pb_grpc.InspectionStub) -> tuple[list[Any], str]:
        return await all_pages(stub.ListVms, request, "vms"), "vms"

    _run(args, fetch, ["VM", "HOST", "SERVICE", "HANDLER", "INCARNATION", "POOL", "LEASED TO"],
         lambda vs: [[v.vm_id, v.host_id, v.service, v.handler, str(v.revision) + (" (used)" if v.used else ""),
                      v.lease_id or "-", v.leased_to or "-"] for v in vs])


def cmd_services(args: argparse.Namespace) -> None:
    async def fetch(stub: pb_grpc.InspectionStub) -> tuple[list[Any], str]:
        return await all_pages(stub.ListServices, pb.ListServicesRequest(), "services"), "services"

    _run(args, fetch, ["SERVICE", "NETWORK", "VNI", "TARGET", "POOL", "TTL", "IDLE", "VMS", "FREE"],
         lambda ss: [[s.name, s.network, str(s.vni), s.target, f"{s.policy.min_pool}..{s.policy.max_pool}",
                      f"{s.policy.lease_ttl_s}s", f"{s.policy.idle_release_s:g}s", str(s.vms), str(s.free_vms)]
                     for s in ss])
