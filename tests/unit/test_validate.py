"""Frame validation at the producer host (SPEC §3 step 11, §10), as a pure function: with
certificates the sender is the stream's peer; only --insecure believes the frame's src_host."""

from __future__ import annotations

from producer_host.validate import Accept, Addressing, MaybeEarly, may_open_tunnel, may_send_frame, validate
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, Network, Pool, ProducerVm, VmId
from mapping.state import ClusterState
from wire.errors import StaleClaim, Status
from wire.tls import Identity, Kind
from wire.verdict import Refusal

ME, ADDRESS = HostId("p1"), "127.0.0.1:7100"
C1 = Identity(Kind.CONSUMER, "c1")
CLAIM = Claim(VmId("blue/10.1.1.1"), LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 5, revision=20)
POOL = Pool("echo", VmId("blue/10.1.0.1"), HostId("c1"), LeaseId(9), 10, revision=20)


def state(*, pool: bool = True) -> ClusterState:
    s = ClusterState()
    vm = ProducerVm("blue", "10.1.1.1", ME, "echo", revision=5)
    for record in [Network("blue", 100), Host(ME, HostKind.PRODUCER, ADDRESS),
                   Host(HostId("c1"), HostKind.CONSUMER, "127.0.0.1:7200"), vm, CLAIM, *([POOL] if pool else [])]:
        s.apply(keys.key_of(record), record)
    return s


def frame(**changes: object) -> Addressing:
    base = dict(vni=100, src_host="127.0.0.1:7200", dst_host=ADDRESS, fencing_token=20, network="blue",
                src="10.1.0.1", dst="10.1.1.1")
    return Addressing(**{**base, **changes})  # type: ignore[arg-type]


def refused(verdict: Accept | Refusal | None, code: Status, text: str) -> bool:
    return isinstance(verdict, Refusal) and verdict.code == code and text in verdict.message


def test_a_frame_from_the_owner_of_the_current_claim_is_accepted() -> None:
    verdict = validate(frame(), state(), ME, ADDRESS, C1)
    assert isinstance(verdict, Accept) and verdict.vm == "blue/10.1.1.1"


def test_each_reason_to_refuse_has_its_status() -> None:
    s = state()
    cases = [
        (frame(dst_host="127.0.0.1:1"), Status.INVALID_ARGUMENT, "addressed to host"),
        (frame(vni=7), Status.NOT_FOUND, "VNI 7"),
        (frame(dst="10.1.1.2"), Status.NOT_FOUND, "not hosted"),
        (frame(fencing_token=19), Status.FAILED_PRECONDITION, "fencing token 19"),
        (frame(src="10.1.0.2"), Status.PERMISSION_DENIED, "leased to consumer VM blue/10.1.0.1"),
        (frame(network=""), Status.INVALID_ARGUMENT, "missing"),
    ]
    for addressing, code, text in cases:
        verdict = validate(addressing, s, ME, ADDRESS, C1)
        assert refused(verdict, code, text), (addressing, verdict)


def test_with_certificates_a_correct_src_host_proves_nothing_and_a_wrong_one_is_refused() -> None:
    assert refused(validate(frame(), state(), ME, ADDRESS, Identity(Kind.CONSUMER, "c2")),
                   Status.PERMISSION_DENIED, "another consumer host's pool, not to consumer/c2")
    assert refused(validate(frame(src_host="127.0.0.1:9999"), state(), ME, ADDRESS, C1),
                   Status.PERMISSION_DENIED, "came from 127.0.0.1:9999")


def test_another_consumer_host_forging_a_frame_learns_nothing_of_the_lessee() -> None:
    verdict = validate(frame(src="10.1.0.2"), state(), ME, ADDRESS, Identity(Kind.CONSUMER, "c2"))
    assert refused(verdict, Status.PERMISSION_DENIED, "another consumer host's pool")
    assert isinstance(verdict, Refusal) and "10.1.0.1" not in verdict.message


def test_insecure_mode_believes_src_host_and_compares_it_with_the_owner_s_address() -> None:
    verdict = validate(frame(src_host="127.0.0.1:9999"), state(), ME, ADDRESS, None, insecure=True)
    assert refused(verdict, Status.PERMISSION_DENIED, "came from 127.0.0.1:9999")
    assert isinstance(validate(frame(), state(), ME, ADDRESS, None, insecure=True), Accept)


def test_only_a_consumer_host_may_open_a_tunnel() -> None:
    assert may_open_tunnel(C1) is None
    for peer in [Identity(Kind.PRODUCER, "p2"), Identity(Kind.REGISTRY, "r1"), Identity(Kind.OPERATOR, "admin")]:
        assert refused(may_open_tunnel(peer), Status.PERMISSION_DENIED, f"this stream's peer is {peer}")
    assert refused(may_open_tunnel(None), Status.PERMISSION_DENIED, "names no leasenet identity")


def test_a_frame_may_be_sent_only_by_the_consumer_host_the_claim_names() -> None:
    """The claim names its pool's consumer host (registries write both in one transaction): this
    host, which watches only its own VMs' claims, needs no pool record to tell the owner."""
    assert may_send_frame(C1, CLAIM) is None
    cases = [
        (None, "names no leasenet identity"),
        (Identity(Kind.PRODUCER, "c1"), "only consumer hosts send tunnel frames"),
        (Identity(Kind.CONSUMER, "c2"), "another consumer host's pool, not to consumer/c2"),
    ]
    for peer, text in cases:
        assert refused(may_send_frame(peer, CLAIM), Status.PERMISSION_DENIED, text), peer
    assert isinstance(validate(frame(), state(pool=False), ME, ADDRESS, C1), Accept)  # no pool record needed


def test_without_a_certificate_and_without_insecure_every_frame_is_refused() -> None:
    assert refused(validate(frame(), state(), ME, ADDRESS, None), Status.PERMISSION_DENIED, "no leasenet identity")


def test_a_token_newer_than_the_replica_may_just_be_early() -> None:
    early = validate(frame(fencing_token=25), state(), ME, ADDRESS, C1)
    stale = validate(frame(fencing_token=15), state(), ME, ADDRESS, C1)
    assert isinstance(early, MaybeEarly) and early.error is StaleClaim
    assert isinstance(stale, Refusal) and not isinstance(stale, MaybeEarly) and stale.error is StaleClaim


def test_a_claim_on_an_older_incarnation_of_the_vm_is_refused() -> None:
    s = state()
    reborn = ProducerVm("blue", "10.1.1.1", ME, "echo", revision=30)
    s.apply(keys.key_of(reborn), reborn)
    verdict = validate(frame(), s, ME, ADDRESS, C1)
    assert isinstance(verdict, Refusal) and verdict.error is StaleClaim
