"""Paginated inspection lists (AIP-158): the pure page cutter, and every List call of a registry's
Inspection service through gRPC with small pages: each item exactly once, bad tokens refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from leasenet.inspection import all_pages
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, Pool, ProducerVm, Service
from mapping.replica import Replica
from mapping.store.memory import MemoryStore
from registry.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest, page_request, take_page
from registry.service import InspectionServicer
from wire import rpc
from wire.errors import InvalidRequest
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc


def cut(items: list[str], request: PageRequest, budget: int = 10**9) -> tuple[list[str], str]:
    return take_page([(s, s) for s in items], lambda s: s, len, request, budget)


def test_pages_continue_after_the_last_key_so_changes_between_pages_repeat_or_skip_nothing_else() -> None:
    first, token = cut(["c", "a", "b", "d"], page_request(2, "", b"", "ListX"))
    assert first == ["a", "b"] and token
    # "a" vanished and "aa" appeared before the cursor meanwhile: neither disturbs the rest
    second, token = cut(["aa", "b", "c", "d"], page_request(2, token, b"", "ListX"))
    assert second == ["c", "d"] and token == ""


def test_a_page_ends_before_its_messages_outgrow_the_byte_budget_but_holds_at_least_one() -> None:
    request = page_request(10, "", b"", "ListX")
    page, token = cut(["aaaa", "bbbb", "cccc"], request, budget=9)
    assert page == ["aaaa", "bbbb"] and token
    assert cut(["a" * 50, "b"], request, budget=9)[0] == ["a" * 50]


def test_page_size_zero_means_the_default_and_too_big_means_the_maximum() -> None:
    assert page_request(0, "", b"", "ListX").size == DEFAULT_PAGE_SIZE
    assert page_request(10**6, "", b"", "ListX").size == MAX_PAGE_SIZE


@pytest.mark.parametrize("token, sentence", [("garbage!", "is not one this registry gave out"),
                                             ("eyJhIjogMX0=", "is not one this registry gave out")])
def test_a_made_up_token_is_refused_with_a_sentence(token: str, sentence: str) -> None:
    with pytest.raises(InvalidRequest, match=sentence):
        page_request(2, token, b"", "ListVms")


def test_a_token_used_with_other_filters_or_a_negative_size_is_refused() -> None:
    _, token = cut(["a", "b", "c"], page_request(1, "", b"service=echo", "ListVms"))
    with pytest.raises(InvalidRequest, match="belongs to a list with other filters"):
        page_request(1, token, b"service=other", "ListVms")
    with pytest.raises(InvalidRequest, match="must not be negative"):
        page_request(-1, "", b"", "ListVms")


# --- through gRPC ------------------------------------------------------------------------------------
HOSTS, VMS, POOLS = 11, 23, 7


async def fill(store: MemoryStore) -> None:
    policy = LeasePolicy(min_pool=1, max_pool=4, lease_ttl_s=30)
    records: list[object] = [Network("blue", 100), *(Service(f"s{i}", "blue", f"10.1.255.{i}", 7, policy)
                                                        for i in range(5))]
    records += [Host(HostId(f"h{i:02}"), HostKind.PRODUCER, f"127.0.0.1:{7000 + i}") for i in range(HOSTS)]
    records += [ProducerVm("blue", f"10.1.1.{i}", HostId(f"h{i % HOSTS:02}"), f"s{i % 5}") for i in range(VMS)]
    for record in records:
        await store.put(keys.key_of(record), keys.encode(record))  # type: ignore[arg-type]
    for i in range(POOLS):
        lease = LeaseId(await store.grant_lease(30))
        pool = Pool(f"s{i % 5}", f"blue/10.1.0.{i}", HostId("c1"), lease, 30)
        vm = ProducerVm("blue", f"10.1.1.{i}", HostId(f"h{i % HOSTS:02}"), f"s{i % 5}")
        claim = Claim(vm.vm_id, lease, pool.service, pool.consumer_vm, pool.consumer_host, 0)
        items = [(keys.key_of(pool), keys.encode(pool)), (keys.key_of(claim), keys.encode(claim))]
        assert (await store.create_all(items, lease=lease)).succeeded


@pytest.fixture
async def inspection() -> AsyncIterator[pb_grpc.InspectionStub]:
    store = MemoryStore()
    await fill(store)
    replica = Replica(store)
    task = asyncio.create_task(replica.run())
    await replica.synced.wait()
    server = rpc.Server("127.0.0.1:0")
    server.add(pb_grpc.add_InspectionServicer_to_server, InspectionServicer(replica, insecure=True),
               "leasenet.v1.Inspection")
    address = await server.start()
    try:
        async with rpc.channel(address) as channel:
            yield pb_grpc.InspectionStub(channel)
    finally:
        await server.stop(0)
        task.cancel()
        await store.close()


NAME = {"hosts": "host_id", "vms": "vm_id", "services": "name", "leases": "lease_id"}  # each item's id


async def pages(call, request, field: str) -> list[list[str]]:  # noqa: ANN001
    """Each page's item ids, following next_page_token by hand."""
    out = []
    while True:
        response = await call(request, timeout=5)
        out.append([getattr(item, NAME[field]) for item in getattr(response, field)])
        if not response.next_page_token:
            return out
        request.page_token = response.next_page_token


@pytest.mark.parametrize("method, request_type, field, total", [
    ("ListHosts", pb.ListHostsRequest, "hosts", HOSTS), ("ListVms", pb.ListVmsRequest, "vms", VMS),
    ("ListServices", pb.ListServicesRequest, "services", 5), ("ListLeases", pb.ListLeasesRequest, "leases", POOLS)])
async def test_every_list_in_pages_of_three_holds_each_item_exactly_once(inspection, method, request_type, field,
                                                                         total) -> None:
    call = getattr(inspection, method)
    got = await pages(call, request_type(page_size=3), field)
    names = [name for page in got for name in page]
    assert all(len(page) <= 3 for page in got) and len(got) == -(-total // 3)
    assert len(names) == total and len(set(names)) == total
    whole = [getattr(item, NAME[field]) for item in getattr(await call(request_type(), timeout=5), field)]
    assert names == whole  # the same order as one big page


async def test_a_filtered_list_follows_pages_with_its_filters(inspection) -> None:
    vms = await all_pages(inspection.ListVms, pb.ListVmsRequest(service="s1", page_size=2), "vms")
    assert sorted(v.vm_id for v in vms) == sorted(f"blue/10.1.1.{i}" for i in range(VMS) if i % 5 == 1)


async def test_a_bad_or_foreign_page_token_is_invalid_argument(inspection) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await inspection.ListVms(pb.ListVmsRequest(page_token="nonsense"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "gave out" in (bad.value.details() or "")
    token = (await inspection.ListVms(pb.ListVmsRequest(page_size=2), timeout=5)).next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await inspection.ListVms(pb.ListVmsRequest(service="s1", page_size=2, page_token=token), timeout=5)
    assert foreign.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in (foreign.value.details() or "")
