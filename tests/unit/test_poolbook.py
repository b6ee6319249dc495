"""The pool book, event by event: each event in, the effects out. No process, no event loop."""

from __future__ import annotations


from consumer_host.datapath import Admitted, Attachment, PoolVm
from consumer_host.tokens import PlainToken
from consumer_host.poolbook import (
    STRAY_GRACE_S,
    AVOID_HOST_S,
    GROW_BACKOFF_S,
    LEASING_PAUSE_S,
    Granted,
    GrowLease,
    GrowRefused,
    Grown,
    HostBroken,
    LeaseRefused,
    PoolBook,
    ReleaseLease,
    ReplicaChanged,
    RequestDone,
    RequestLease,
    ShrinkLease,
    Shrunk,
    Taken,
    Tick,
    Waiting,
    Wake,
)
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, LeasePolicy, Pool as PoolRecord, Service, VmId
from mapping.state import ClusterState
from wire.errors import PoolExhausted, Status, StoreUnavailable
from wire.verdict import Refusal

ECHO = Service("echo", "blue", "10.1.255.1", 7,
               LeasePolicy(min_pool=1, max_pool=2, lease_ttl_s=6, idle_release_s=30.0))
VM = Attachment("blue", "10.1.0.1", PlainToken("secret"))
ADMITTED = Admitted(VM, ECHO, 100)
KEY = (VM.vm_id, "echo")
LEASE = LeaseId(7)


def vm(n: int, token: int | None = None, host: str = "127.0.0.1:7101") -> PoolVm:
    return PoolVm(VmId(f"blue/10.1.1.{n}"), f"10.1.1.{n}", host, token if token is not None else 10 + n)


def leased(*members: PoolVm, now: float = 0.0) -> PoolBook:
    """A book holding one pool (lease 7) with these members."""
    book = PoolBook()
    outcome, effects = book.take(KEY, ADMITTED, now)
    assert outcome == Waiting() and effects == [RequestLease(KEY, ADMITTED, ())]
    assert book.handle(Granted(KEY, ADMITTED, LEASE, 11, members, now)) == [Wake(KEY)]
    return book


def claim(member: PoolVm, lease: LeaseId = LEASE) -> Claim:
    return Claim(member.vm, lease, "echo", VM.vm_id, HostId("c1"), vm_revision=1, revision=member.fencing_token)


def test_a_first_request_asks_for_one_lease_however_many_requests_wait_for_it() -> None:
    book = PoolBook()
    assert book.take(KEY, ADMITTED, 0.0) == (Waiting(), [RequestLease(KEY, ADMITTED, ())])
    assert book.take(KEY, ADMITTED, 0.1) == (Waiting(), [])  # joins the lease request in flight
    assert book.handle(Granted(KEY, ADMITTED, LEASE, 11, (vm(1),), 0.2)) == [Wake(KEY)]
    outcome, effects = book.take(KEY, ADMITTED, 0.3)
    assert isinstance(outcome, Taken) and outcome.member == vm(1) and effects == []


def test_leasing_agents_answering_unavailable_make_new_leases_fail_at_once_for_a_while() -> None:
    book = PoolBook()
    book.take(KEY, ADMITTED, 0.0)
    refusal = Refusal(StoreUnavailable, "leasing agent r1 is unavailable: etcd is unavailable (lease grant)")
    assert book.handle(LeaseRefused(KEY, refusal, 1.0)) == [Wake(KEY, refusal)]  # the waiters fail with it

    other = (VmId("blue/10.1.0.2"), "echo")
    outcome, effects = book.take(other, ADMITTED, 1.5)
    assert isinstance(outcome, Refusal) and outcome.code == Status.UNAVAILABLE and effects == []
    assert "etcd is unavailable" in outcome.message and "fail at once" in outcome.message
    # after the pause one request asks again, and an answer ends the pause for everyone
    assert book.take(other, ADMITTED, 1.0 + LEASING_PAUSE_S) == (Waiting(), [RequestLease(other, ADMITTED, ())])
    book.handle(Granted(other, ADMITTED, LeaseId(8), 12, (vm(2),), 2.1))
    assert book.take(KEY, ADMITTED, 2.2) == (Waiting(), [RequestLease(KEY, ADMITTED, ())])


def test_no_capacity_fails_the_waiters_but_the_next_request_asks_again() -> None:
    book = PoolBook()
    book.take(KEY, ADMITTED, 0.0)
    refusal = Refusal(PoolExhausted, "service 'echo' has 0 free producer VM(s)")
    assert book.handle(LeaseRefused(KEY, refusal, 0.5)) == [Wake(KEY, refusal)]
    assert book.take(KEY, ADMITTED, 0.6) == (Waiting(), [RequestLease(KEY, ADMITTED, ())])


def test_a_busy_pool_grows_once_at_a_time_and_backs_off_after_a_refusal() -> None:
    book = leased(vm(1))
    assert isinstance(book.take(KEY, ADMITTED, 1.0)[0], Taken)
    assert book.take(KEY, ADMITTED, 1.0) == (Waiting(), [GrowLease(KEY, LEASE, 11, ())])
    assert book.take(KEY, ADMITTED, 1.0) == (Waiting(), [])  # one grow in flight

    assert book.handle(GrowRefused(KEY, LEASE, expired=False, now=1.1)) == [Wake(KEY)]
    assert book.take(KEY, ADMITTED, 1.1 + GROW_BACKOFF_S / 2) == (Waiting(), [])  # backing off
    assert book.take(KEY, ADMITTED, 1.1 + GROW_BACKOFF_S) == (Waiting(), [GrowLease(KEY, LEASE, 11, ())])

    assert book.handle(Grown(KEY, LEASE, (vm(1), vm(2)))) == [Wake(KEY)]
    outcome, _ = book.take(KEY, ADMITTED, 2.0)
    assert isinstance(outcome, Taken) and outcome.member == vm(2)
    assert book.take(KEY, ADMITTED, 2.0) == (Waiting(), [])  # at max_pool 2: wait for one to be put back


def test_a_request_done_wakes_the_waiters_and_a_refused_vm_is_skipped() -> None:
    book = leased(vm(1), vm(2))
    first = book.take(KEY, ADMITTED, 1.0)[0]
    assert isinstance(first, Taken)
    assert book.handle(RequestDone(KEY, LEASE, first.member, refused=True, now=1.5)) == [Wake(KEY)]
    for _ in range(2):
        outcome = book.take(KEY, ADMITTED, 2.0)[0]
        assert isinstance(outcome, Taken) and outcome.member != first.member
        book.handle(RequestDone(KEY, LEASE, outcome.member, refused=False, now=2.0))


def test_a_lost_member_leaves_the_pool_and_the_pool_refills() -> None:
    book = leased(vm(1))
    state = ClusterState()
    effects = book.handle(ReplicaChanged(claim(vm(1)), None, state, 3.0))  # the collector deleted its claim
    assert effects == [GrowLease(KEY, LEASE, 11, ()), Wake(KEY)]
    assert book.pools[KEY].members == {}


def test_a_stale_late_answer_does_not_revive_a_forgotten_member() -> None:
    book = leased(vm(1), vm(2))
    book.handle(ReplicaChanged(claim(vm(2)), None, ClusterState(), 3.0))
    book.pools[KEY].growing = True  # a grow was in flight when vm 2 was lost
    book.handle(Grown(KEY, LEASE, (vm(1), vm(2))))  # its answer still lists vm 2 with the old token
    assert set(book.pools[KEY].members) == {vm(1).vm}
    book.handle(Grown(KEY, LEASE, (vm(1), vm(2, token=40))))  # claimed again later: a new token
    assert book.pools[KEY].members[vm(2).vm] == vm(2, token=40)


def test_an_answer_about_a_lease_no_longer_held_changes_nothing() -> None:
    book = leased(vm(1))
    pool = PoolRecord("echo", VM.vm_id, HostId("c1"), LEASE, 6)
    assert book.handle(ReplicaChanged(pool, None, ClusterState(), 4.0)) == [Wake(KEY)]  # released, or expired
    assert KEY not in book.pools
    assert book.handle(Grown(KEY, LEASE, (vm(2),))) == []
    assert book.handle(RequestDone(KEY, LEASE, vm(1), refused=False, now=5.0)) == []


def test_a_lease_is_never_renewed_one_by_one_and_is_released_when_idle() -> None:
    book = leased(vm(1), now=0.0)
    assert [book.handle(Tick(t)) for t in (1.0, 2.0, 4.0, 10.0)] == [[], [], [], []]  # the host's lease keeps it
    assert book.handle(Tick(30.0)) == [ReleaseLease(LEASE, VM.vm_id), Wake(KEY)]  # idle for idle_release_s
    assert KEY not in book.pools


def test_a_pool_of_ours_the_book_does_not_hold_is_released_after_a_grace() -> None:
    book = leased(vm(1), now=0.0)
    stray = LeaseId(99)
    in_etcd = {LEASE: VM.vm_id, stray: VmId("blue/10.1.0.9")}
    assert book.strays(in_etcd, 1.0) == []  # a grant whose answer is on its way looks the same at first
    assert book.strays(in_etcd, 1.0 + STRAY_GRACE_S - 0.1) == []
    assert book.strays(in_etcd, 1.0 + STRAY_GRACE_S) == [ReleaseLease(stray, VmId("blue/10.1.0.9"))]
    assert book.strays({LEASE: VM.vm_id}, 100.0) == []  # the held one never is


def test_a_pool_in_use_is_not_released() -> None:
    book = leased(vm(1))
    book.take(KEY, ADMITTED, 1.0)
    assert not any(isinstance(e, ReleaseLease) for e in book.handle(Tick(100.0)))


def test_a_broken_host_is_shrunk_away_avoided_and_the_pool_refills_elsewhere() -> None:
    book = leased(vm(1, host="127.0.0.1:7101"), vm(2, host="127.0.0.1:7102"))
    effects = book.handle(HostBroken("127.0.0.1:7101", 5.0))
    assert effects == [ShrinkLease(KEY, LEASE, (vm(1).vm,)), Wake(KEY)]
    # given back; min_pool 1 is still met, but requests wait: grow, avoiding the broken host
    assert book.handle(Shrunk(KEY, LEASE, waiting=True, now=5.1)) == [GrowLease(KEY, LEASE, 11, ("127.0.0.1:7101",))]
    assert book.avoid_hosts(5.0 + AVOID_HOST_S) == ()  # by then the registry knows by itself

    book = leased(vm(1, host="127.0.0.1:7101"))
    book.handle(HostBroken("127.0.0.1:7101", 5.0))
    host = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101", revision=90)
    book.handle(ReplicaChanged(None, host, ClusterState(), 5.2))  # it came back: worth trying again
    assert book.avoid_hosts(5.3) == ()


def test_a_shrink_with_nobody_waiting_and_min_pool_met_does_not_grow() -> None:
    book = leased(vm(1, host="a:1"), vm(2, host="b:1"))
    book.handle(HostBroken("a:1", 5.0))
    assert book.handle(Shrunk(KEY, LEASE, waiting=False, now=5.1)) == []


def test_a_request_past_its_deadline_hears_why() -> None:
    book = PoolBook()
    no_lease = book.past_deadline(KEY, ADMITTED)
    assert no_lease.code == Status.UNAVAILABLE and "within the request's deadline" in no_lease.message
    book = leased(vm(1))
    all_busy = book.past_deadline(KEY, ADMITTED)
    assert all_busy.code == Status.RESOURCE_EXHAUSTED and "max_pool 2" in all_busy.message


def test_members_on_a_draining_or_vanished_producer_host_leave_the_pool_at_once() -> None:
    """This host sees producer host records, not VM records: a host that drains takes no new
    request, one whose record is gone lost its VMs; either way its members leave and the pool refills."""
    draining = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101", draining=True, revision=90)
    serving = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7101", revision=90)
    book = leased(vm(1, host="127.0.0.1:7101"), vm(2, host="127.0.0.1:7102"))
    effects = book.handle(ReplicaChanged(serving, draining, ClusterState(), 5.0))
    assert effects == [ShrinkLease(KEY, LEASE, (vm(1).vm,)), Wake(KEY)]  # given back: the registry grants elsewhere
    assert set(book.pools[KEY].members) == {vm(2).vm}
    book = leased(vm(1, host="127.0.0.1:7101"), vm(3, host="127.0.0.1:7101"))
    taken = book.take(KEY, ADMITTED, 4.0)[0]
    assert isinstance(taken, Taken)
    effects = book.handle(ReplicaChanged(serving, draining, ClusterState(), 5.0))
    idle = next(m for m in (vm(1), vm(3)) if m != taken.member)
    # the busy one is only forgotten: ending its claim would cut the call in flight
    assert ShrinkLease(KEY, LEASE, (idle.vm,)) in effects and book.pools[KEY].members == {}
    book = leased(vm(1, host="127.0.0.1:7101"))
    effects = book.handle(ReplicaChanged(serving, None, ClusterState(), 5.0))
    assert effects == [GrowLease(KEY, LEASE, 11, ()), Wake(KEY)]  # its claims are the collector's; refill now
    assert book.pools[KEY].members == {}
