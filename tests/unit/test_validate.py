"""Frame validation at the producer host (SPEC §3 step 11), as a pure function."""

from __future__ import annotations

from producer_host.validate import Accept, Addressing, Reject, validate
from mapping import keys
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, Network, ProducerVm, VmId
from mapping.state import ClusterState
from wire.errors import StaleClaim, Status

ME, ADDRESS = HostId("p1"), "127.0.0.1:7100"


def state() -> ClusterState:
    s = ClusterState()
    vm = ProducerVm("blue", "10.1.1.1", ME, "echo", revision=5)
    for record in [Network("blue", 100), Host(ME, HostKind.PRODUCER, ADDRESS),
                   Host(HostId("c1"), HostKind.CONSUMER, "127.0.0.1:7200"), vm,
                   Claim(vm.vm_id, LeaseId(9), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 5, revision=20)]:
        s.apply(keys.key_of(record), record)
    return s


def frame(**changes: object) -> Addressing:
    base = dict(vni=100, src_host="127.0.0.1:7200", dst_host=ADDRESS, fencing_token=20, network="blue",
                src="10.1.0.1", dst="10.1.1.1")
    return Addressing(**{**base, **changes})  # type: ignore[arg-type]


def test_a_frame_for_the_current_claim_is_accepted() -> None:
    verdict = validate(frame(), state(), ME, ADDRESS)
    assert isinstance(verdict, Accept) and verdict.vm == "blue/10.1.1.1"


def test_each_reason_to_refuse_has_its_status() -> None:
    s = state()
    cases = [
        (frame(dst_host="127.0.0.1:1"), Status.INVALID_ARGUMENT, "addressed to host"),
        (frame(vni=7), Status.NOT_FOUND, "VNI 7"),
        (frame(dst="10.1.1.2"), Status.NOT_FOUND, "not hosted"),
        (frame(fencing_token=19), Status.FAILED_PRECONDITION, "fencing token 19"),
        (frame(src="10.1.0.2"), Status.PERMISSION_DENIED, "leased to consumer VM blue/10.1.0.1"),
        (frame(src_host="127.0.0.1:9999"), Status.PERMISSION_DENIED, "came from 127.0.0.1:9999"),
        (frame(network=""), Status.INVALID_ARGUMENT, "missing"),
    ]
    for addressing, code, text in cases:
        verdict = validate(addressing, s, ME, ADDRESS)
        assert isinstance(verdict, Reject) and verdict.code == code and text in verdict.message, (addressing, verdict)


def test_a_token_newer_than_the_replica_may_just_be_early() -> None:
    early = validate(frame(fencing_token=25), state(), ME, ADDRESS)
    stale = validate(frame(fencing_token=15), state(), ME, ADDRESS)
    assert isinstance(early, Reject) and early.may_be_early
    assert isinstance(stale, Reject) and not stale.may_be_early


def test_a_claim_on_an_older_incarnation_of_the_vm_is_refused() -> None:
    s = state()
    reborn = ProducerVm("blue", "10.1.1.1", ME, "echo", revision=30)
    s.apply(keys.key_of(reborn), reborn)
    verdict = validate(frame(), s, ME, ADDRESS)
    assert isinstance(verdict, Reject) and verdict.error is StaleClaim
