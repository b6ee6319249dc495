"""One error vocabulary: each failure has its own type and status, a status that crosses the wire
comes back as the very type that was sent, and what a consumer VM reads never carries an internal
exception's text."""

from __future__ import annotations

import subprocess
import sys

import grpc
import grpc.aio
import pytest

from tests.conftest import REPO
from wire import rpc
from wire.errors import (
    LeasenetError,
    LeaseExpired,
    PreconditionFailed,
    ProducerUnavailable,
    StaleClaim,
    Status,
    StoreUnavailable,
    Unavailable,
    error_for_status,
)
from wire.v1 import registry_pb2 as pb
from wire.v1 import registry_pb2_grpc as pb_grpc

ALL_ERRORS = sorted(LeasenetError.by_name.values(), key=lambda cls: cls.__name__)


def test_every_status_has_grpcs_own_number_and_converts_both_ways() -> None:
    for code in grpc.StatusCode:
        assert rpc.from_grpc(code).value == code.value[0] and rpc.to_grpc(rpc.from_grpc(code)) is code


def test_a_number_no_status_has_reads_as_unknown() -> None:
    assert (Status.of(9), Status.of(99), Status.of(-1)) == (Status.FAILED_PRECONDITION, Status.UNKNOWN, Status.UNKNOWN)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_a_status_sent_with_its_type_name_comes_back_as_that_very_type(cls: type[LeasenetError]) -> None:
    rebuilt = error_for_status(cls.code, "a sentence", cls.__name__)
    assert type(rebuilt) is cls and (rebuilt.code, rebuilt.message) == (cls.code, "a sentence")


def test_failures_that_share_a_status_stay_apart() -> None:
    assert type(error_for_status(Status.UNAVAILABLE, "m", "StoreUnavailable")) is StoreUnavailable
    assert type(error_for_status(Status.UNAVAILABLE, "m", "ProducerUnavailable")) is ProducerUnavailable
    assert type(error_for_status(Status.FAILED_PRECONDITION, "m", "LeaseExpired")) is LeaseExpired
    assert type(error_for_status(Status.FAILED_PRECONDITION, "m", "StaleClaim")) is StaleClaim


def test_a_status_without_a_type_name_claims_no_more_than_the_status_says() -> None:
    assert type(error_for_status(Status.UNAVAILABLE, "m")) is Unavailable
    assert type(error_for_status(Status.FAILED_PRECONDITION, "m")) is PreconditionFailed


def test_a_type_name_that_does_not_match_the_status_is_not_believed() -> None:
    assert type(error_for_status(Status.NOT_FOUND, "m", "LeaseExpired")).__name__ == "NotFound"
    assert type(error_for_status(Status.UNAVAILABLE, "m", "NoSuchError")) is Unavailable


def test_a_status_none_of_ours_has_keeps_that_status() -> None:
    err = error_for_status(Status.UNIMPLEMENTED, "not here")
    assert type(err) is LeasenetError and err.code == Status.UNIMPLEMENTED and err.message == "not here"


def test_pure_modules_name_statuses_without_importing_grpc() -> None:
    pure = "consumer_host.datapath, producer_host.validate, producer_host.actors, wire.errors"
    code = f"import sys, {pure}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


class Failing(pb_grpc.LeasingServicer):
    """A leasing service whose every call fails with what the test put in `raise_`."""

    def __init__(self) -> None:
        self.raise_: BaseException = RuntimeError()

    @rpc.edge
    async def RenewLease(self, request: pb.LeaseRef, context: grpc.aio.ServicerContext) -> pb.RenewLeaseResponse:
        raise self.raise_


async def call_failing(raise_: BaseException) -> grpc.aio.AioRpcError:
    servicer = Failing()
    servicer.raise_ = raise_
    server = rpc.Server("127.0.0.1:0")
    server.add(pb_grpc.add_LeasingServicer_to_server, servicer, "leasenet.v1.Leasing")
    address = await server.start()
    try:
        async with rpc.channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pb_grpc.LeasingStub(channel).RenewLease(pb.LeaseRef(lease_id="1"), timeout=5)
        return failed.value
    finally:
        await server.stop(0)


async def test_a_typed_error_crosses_a_real_call_as_its_type_and_sentence_but_not_its_detail() -> None:
    failed = await call_failing(StoreUnavailable("etcd is unavailable (put)", detail="socket closed by peer 10.9.9.9"))
    assert failed.code() == grpc.StatusCode.UNAVAILABLE and "10.9.9.9" not in (failed.details() or "")
    rebuilt = rpc.error_from_rpc(failed, "registry r1")
    assert type(rebuilt) is StoreUnavailable and rebuilt.message == "etcd is unavailable (put)"


async def test_an_unexpected_exception_becomes_internal_without_its_text() -> None:
    failed = await call_failing(KeyError("the secret internals"))
    assert failed.code() == grpc.StatusCode.INTERNAL and "secret" not in (failed.details() or "")
    assert "RenewLease" in (failed.details() or "")


async def test_a_status_from_a_server_that_names_no_type_keeps_its_text_out_of_the_message() -> None:
    server = rpc.Server("127.0.0.1:0")  # no Leasing service: grpc itself answers UNIMPLEMENTED
    address = await server.start()
    try:
        async with rpc.channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await pb_grpc.LeasingStub(channel).RenewLease(pb.LeaseRef(lease_id="1"), timeout=5)
    finally:
        await server.stop(0)
    rebuilt = rpc.error_from_rpc(failed.value, "registry r1")
    assert type(rebuilt) is LeasenetError and rebuilt.code == Status.UNIMPLEMENTED
    assert rebuilt.message == "registry r1 failed the call with UNIMPLEMENTED"
    assert rebuilt.detail == (failed.value.details() or "") and rebuilt.detail != ""
