"""Properties of the pure cores, over inputs hypothesis makes up: frame validation accepts exactly
the frames of a current claim and refuses everything else with a sentence; admission, pool
decisions and routing keep their invariants whatever the sequence of events; the checker's
overlap detection agrees with a brute-force one."""

from __future__ import annotations

import copy
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from wire.errors import Status
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
    members_from_state,
    route,
)
from consumer_host.tokens import PlainToken
from leasenet.checker import Execution, overlapping
from producer_host.validate import Accept, Addressing, MaybeEarly, validate
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, Pool, ProducerVm, Service, VmId
from mapping.state import ClusterState
from wire.tls import Identity, Kind
from wire.verdict import Refusal

ME, ADDRESS = HostId("p1"), "127.0.0.1:7100"
CONSUMER_HOST = "127.0.0.1:7200"
ECHO = Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(min_pool=1, max_pool=3))
RED = Service("red-echo", "red", "10.2.255.1", 7)


def cluster_state() -> ClusterState:
    """Two VMs here (one claimed, one re-registered since its claim), one on another host, one free."""
    s = ClusterState()
    records = [
        Network("blue", 100), Network("red", 200), ECHO, RED,
        Host(ME, HostKind.PRODUCER, ADDRESS), Host(HostId("p2"), HostKind.PRODUCER, "127.0.0.1:7101"),
        Host(HostId("c1"), HostKind.CONSUMER, CONSUMER_HOST),
        ProducerVm("blue", "10.1.1.1", ME, "echo", revision=5),
        ProducerVm("blue", "10.1.1.2", ME, "echo", revision=30),
        ProducerVm("blue", "10.1.1.3", ME, "echo", revision=6),
        ProducerVm("blue", "10.1.2.1", HostId("p2"), "echo", revision=7),
        *CLAIMS,
        Pool("echo", VmId("blue/10.1.0.1"), HostId("c1"), LeaseId(9), 10, revision=20),
    ]
    for r in records:
        s.apply(keys.key_of(r), r)
    for c in CLAIMS:  # their mirrors, which the pool's consumer host watches
        s.apply(keys.member_key(c), c)
    return s


CLAIMS = [
    Claim(VmId("blue/10.1.1.1"), LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 5, revision=20, host_id=ME),
    Claim(VmId("blue/10.1.1.2"), LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 8, revision=21, host_id=ME),
    Claim(VmId("blue/10.1.2.1"), LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 7, revision=22,
          host_id=HostId("p2")),
    Claim(VmId("blue/10.1.3.1"), LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 7, revision=23,
          host_id=HostId("p9")),  # its producer host is not registered (any more)
]


VALID = Addressing(vni=100, src_host=CONSUMER_HOST, dst_host=ADDRESS, fencing_token=20, network="blue",
                   src="10.1.0.1", dst="10.1.1.1")  # the only frame this host may deliver

texts = st.one_of(st.sampled_from(["", "blue", "red", "10.1.0.1", "10.1.0.2", "10.1.1.1", "10.1.1.2", "10.1.1.3",
                                   "10.1.2.1", ADDRESS, CONSUMER_HOST, "127.0.0.1:1"]), st.text(max_size=12))
tokens = st.one_of(st.sampled_from([0, 19, 20, 21, 22, 25]), st.integers(-(2 ** 63), 2 ** 63 - 1))
vnis = st.one_of(st.sampled_from([0, 100, 200, 300]), st.integers(0, 2 ** 32 - 1))
addressings = st.builds(Addressing, vni=vnis, src_host=texts, dst_host=texts, fencing_token=tokens, network=texts,
                        src=texts, dst=texts)


def near_valid() -> st.SearchStrategy[Addressing]:
    """The valid frame with some fields replaced: most refusals are one field away from an accept."""
    fields = ["vni", "src_host", "dst_host", "fencing_token", "network", "src", "dst"]
    return st.builds(lambda frame, chosen: Addressing(**{f: getattr(frame if f in chosen else VALID, f)
                                                         for f in fields}),
                     addressings, st.sets(st.sampled_from(fields), min_size=1, max_size=3))


@settings(max_examples=400)
@given(st.one_of(addressings, near_valid(), st.just(VALID)))
def test_validation_accepts_exactly_the_frames_of_a_current_claim(frame: Addressing) -> None:
    state = cluster_state()
    before = copy.deepcopy(state)
    verdict = validate(frame, state, ME, ADDRESS, None, insecure=True)
    assert state == before  # pure: it only reads the replica
    if frame == VALID:
        assert isinstance(verdict, Accept) and verdict.vm == "blue/10.1.1.1" and verdict.claim.revision == 20
        return
    assert isinstance(verdict, Refusal), frame
    assert verdict.code != Status.OK and len(verdict.message.split()) >= 5
    assert not isinstance(verdict, MaybeEarly) or verdict.code == Status.FAILED_PRECONDITION


OWNER = Identity(Kind.CONSUMER, "c1")
peers = st.sampled_from([None, OWNER, Identity(Kind.CONSUMER, "c2"), Identity(Kind.PRODUCER, "c1"),
                         Identity(Kind.REGISTRY, "r1"), Identity(Kind.OPERATOR, "admin")])


@settings(max_examples=400)
@given(st.one_of(addressings, near_valid(), st.just(VALID)), peers)
def test_with_certificates_validation_accepts_exactly_the_owner_s_frames_of_a_current_claim(
        frame: Addressing, peer: Identity | None) -> None:
    verdict = validate(frame, cluster_state(), ME, ADDRESS, peer)
    # the stream's certificate says who sent it; the header must also be exactly right
    if peer == OWNER and frame == VALID:
        assert isinstance(verdict, Accept) and verdict.vm == "blue/10.1.1.1"
        return
    assert isinstance(verdict, Refusal), (frame, peer)
    assert verdict.code != Status.OK and len(verdict.message.split()) >= 5


ATTACHED = {VmId("blue/10.1.0.1"): Attachment("blue", "10.1.0.1", PlainToken("secret")),
            VmId("red/10.2.0.1"): Attachment("red", "10.2.0.1", PlainToken("other"))}


@settings(max_examples=300)
@given(network=texts, src=texts,
       target=st.one_of(st.sampled_from(["10.1.255.1:7", "10.2.255.1:7", "10.1.255.9:7", "junk", ""]), st.text()))
def test_admission_admits_exactly_an_attached_vm_reaching_its_own_networks_service(
        network: str, src: str, target: str) -> None:
    found = attached(ATTACHED, network, src)
    verdict = found if isinstance(found, Refusal) else admit(found, cluster_state(), target)
    attachment = ATTACHED.get(VmId(f"{network}/{src}"))
    service = {("blue", ECHO.target): ECHO, ("red", RED.target): RED}.get((network, target))
    if attachment is not None and service is not None:
        assert verdict == Admitted(attachment, service, {"blue": 100, "red": 200}[network])
    else:
        assert isinstance(verdict, Refusal) and verdict.code != Status.OK
        assert len(verdict.message.split()) >= 5


def member(n: int) -> PoolVm:
    return PoolVm(VmId(f"blue/10.1.1.{n}"), f"10.1.1.{n}", f"127.0.0.{n}:7100", 100 + n)


class PoolMachine(RuleBasedStateMachine):
    """Any sequence of members joining and leaving, requests taking and giving back, refusals and
    grows: the pool never hands out a VM that is busy, refused or not a member."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = HeldPool(ECHO, VmId("blue/10.1.0.1"), LeaseId(1), 1)
        self.taken: set[VmId] = set()

    @rule(n=st.integers(1, 6))
    def join(self, n: int) -> None:
        self.pool.members[member(n).vm] = member(n)

    @rule(n=st.integers(1, 6))
    def leave(self, n: int) -> None:  # as PoolManager forgets a member
        self.pool.members.pop(member(n).vm, None)
        self.pool.busy.discard(member(n).vm)
        self.taken.discard(member(n).vm)

    @rule()
    def request(self) -> None:
        decision = self.pool.decide()
        candidates = set(self.pool.members) - self.pool.busy - self.pool.avoid
        if isinstance(decision, Use):
            vm = decision.member.vm
            assert vm in self.pool.members and vm not in self.pool.busy and vm not in self.pool.avoid
            assert vm not in self.taken  # never two requests on one VM at once
            self.pool.take(decision.member, now=0.0)
            self.taken.add(vm)
        elif isinstance(decision, Grow):
            assert not candidates and not self.pool.growing and len(self.pool.members) < ECHO.policy.max_pool
        else:
            assert isinstance(decision, Wait) and not candidates
            assert self.pool.growing or len(self.pool.members) >= ECHO.policy.max_pool

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), refused=st.booleans())
    def answer(self, data: st.DataObject, refused: bool) -> None:
        vm = data.draw(st.sampled_from(sorted(self.taken)))
        self.pool.put_back(self.pool.members[vm], now=1.0)
        if refused:
            self.pool.avoid.add(vm)
        self.taken.discard(vm)

    @rule()
    def replica_moved(self) -> None:
        self.pool.avoid.clear()

    @rule(growing=st.booleans())
    def grow_state(self, growing: bool) -> None:
        self.pool.growing = growing

    @invariant()
    def busy_is_what_was_taken(self) -> None:
        assert self.pool.busy == self.taken


TestPoolDecisions = PoolMachine.TestCase
TestPoolDecisions.settings = settings(max_examples=150, stateful_step_count=40)


@given(n=st.integers(1, 254), port=st.integers(1, 65535), vni=st.integers(1, 2 ** 24 - 1), host=texts)
def test_routing_goes_to_the_members_host_and_the_answer_comes_from_the_vip(n: int, port: int, vni: int,
                                                                            host: str) -> None:
    service = Service("s", "blue", "10.1.255.1", port)
    r = route(member(n), service, vni, host)
    assert (r.dst, r.dst_port, r.vni, r.src_host, r.dst_host, r.fencing_token) == (
        member(n).address, port, vni, host, member(n).host_address, member(n).fencing_token)
    assert answer_source(service) == ("10.1.255.1", port)


def test_a_pool_is_built_from_its_members_on_registered_producer_hosts() -> None:
    members = members_from_state(cluster_state(), LeaseId(9))
    # the consumer host sees members, not VM records: a re-registered VM (10.1.1.2) stays until the
    # registry's claim collector deletes its claim and mirror; a member on a host gone is unroutable
    assert set(members) == {"blue/10.1.1.1", "blue/10.1.1.2", "blue/10.1.2.1"}
    assert members[VmId("blue/10.1.2.1")].host_address == "127.0.0.1:7101"
    assert members[VmId("blue/10.1.2.1")].fencing_token == 22


runs = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 50), st.integers(0, 20)), max_size=12)


@settings(max_examples=300)
@given(runs)
def test_the_checker_finds_an_overlap_exactly_when_there_is_one(spans: list[tuple[str, int, int]]) -> None:
    executions = [Execution(vm, i, "c", 1, start, start + length, True) for i, (vm, start, length) in enumerate(spans)]
    brute = any(x.vm == y.vm and x.start_ns < y.end_ns and y.start_ns < x.end_ns
                for x, y in itertools.combinations(executions, 2))
    assert bool(overlapping(executions)) == brute
