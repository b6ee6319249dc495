"""The pure core of the request path: admission, pool decisions, routing, the reverse rewrite."""

from __future__ import annotations

from consumer_host.datapath import (
    Admitted,
    Attachment,
    Grow,
    HeldPool,
    PoolVm,
    Use,
    Wait,
    admit,
    answer_source,
    attached,
    route,
)
from consumer_host.tokens import PlainToken
from wire.errors import Status
from wire.verdict import Refusal
from mapping.model import LeaseId, LeasePolicy, Network, Service, VmId
from mapping.state import ClusterState

BLUE = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=5, idle_release_s=2))
RED = Service("red-echo", "red", "10.2.255.1", 7)
ATTACHED = {VmId("blue/10.1.0.1"): Attachment("blue", "10.1.0.1", PlainToken("secret"))}


def state() -> ClusterState:
    s = ClusterState()
    for record, key in [(Network("blue", 100), "/leasenet/v1/networks/blue"), (Network("red", 200), "/leasenet/v1/networks/red"),
                        (BLUE, "/leasenet/v1/services/echo"), (RED, "/leasenet/v1/services/red-echo")]:
        s.apply(key, record)
    return s


def test_an_attached_vm_reaching_a_service_in_its_network_is_admitted() -> None:
    verdict = admit(ATTACHED[VmId("blue/10.1.0.1")], state(), "10.1.255.1:7")
    assert verdict == Admitted(ATTACHED[VmId("blue/10.1.0.1")], BLUE, 100)


def test_each_bad_request_is_refused_with_its_own_status() -> None:
    s = state()
    stranger = attached(ATTACHED, "blue", "10.1.0.9")
    assert isinstance(stranger, Refusal) and stranger.code == Status.PERMISSION_DENIED  # not attached
    vm = ATTACHED[VmId("blue/10.1.0.1")]
    cases = {
        "10.1.255.9:7": Status.NOT_FOUND,  # no such target
        "10.2.255.1:7": Status.PERMISSION_DENIED,  # other network
        "not-an-address": Status.INVALID_ARGUMENT,
    }
    for target, code in cases.items():
        verdict = admit(vm, s, target)
        assert isinstance(verdict, Refusal) and verdict.code == code, (target, verdict)
        assert len(verdict.message.split()) >= 5  # a sentence, not a code
    assert "red" not in admit(vm, s, "10.2.255.1:7").message  # the other tenant's network stays unnamed


def member(n: int) -> PoolVm:
    return PoolVm(VmId(f"blue/10.1.1.{n}"), f"10.1.1.{n}", "127.0.0.1:7100", 10 + n)


def test_a_pool_uses_an_unused_member_then_grows_then_waits() -> None:
    pool = HeldPool(BLUE, VmId("blue/10.1.0.1"), LeaseId(1), 1, members={member(1).vm: member(1)})
    decision = pool.decide()
    assert decision == Use(member(1))
    pool.take(member(1), now=0.0)
    assert pool.decide() == Grow()
    pool.members[member(2).vm] = member(2)
    assert pool.decide() == Use(member(2))
    pool.take(member(2), now=0.0)
    assert pool.decide() == Wait()  # at max_pool 2, both busy
    pool.put_back(member(1), now=1.0)
    assert pool.decide() == Use(member(1))


def test_a_member_that_refused_a_frame_is_skipped() -> None:
    pool = HeldPool(BLUE, VmId("blue/10.1.0.1"), LeaseId(1), 1, members={member(1).vm: member(1), member(2).vm: member(2)})
    pool.avoid.add(member(1).vm)
    assert {pool.decide() for _ in range(4)} == {Use(member(2))}


def test_a_pool_is_idle_only_when_nothing_runs_for_idle_release_s() -> None:
    pool = HeldPool(BLUE, VmId("blue/10.1.0.1"), LeaseId(1), 1, members={member(1).vm: member(1)})
    pool.take(member(1), now=0.0)
    assert not pool.is_idle(now=100.0)
    pool.put_back(member(1), now=10.0)
    assert not pool.is_idle(now=11.0) and pool.is_idle(now=12.0)


def test_routing_rewrites_the_destination_and_the_answer_comes_from_the_vip() -> None:
    r = route(member(3), BLUE, 100, "127.0.0.1:7200")
    assert (r.dst, r.dst_port, r.vni, r.src_host, r.dst_host, r.fencing_token) == (
        "10.1.1.3", 7, 100, "127.0.0.1:7200", "127.0.0.1:7100", 13)
    assert answer_source(BLUE) == ("10.1.255.1", 7)
