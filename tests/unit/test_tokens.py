"""Attach tokens: hashed in the config, verified once per VM then cheaply, guessed at a bounded
rate; the consumer config refuses what it cannot trust; sentences for consumer VMs name nothing
internal."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from consumer_host.config import Limits, load_attachments, plaintext
from consumer_host.datapath import Attachment
from consumer_host.gate import TokenGate, source_of
from consumer_host.sentences import lease_refused, producer_answer
from consumer_host.tokens import PlainToken, Throttle, hash_token, parse_token_hash
from leasenet.cli import main
from wire.errors import (
    ClaimConflict,
    LeasenetError,
    Overloaded,
    PoolExhausted,
    ProducerUnavailable,
    Status,
    StoreUnavailable,
    Unauthenticated,
)

CHEAP = 2**8  # scrypt cost for tests: the format and checks are the same at any cost


def test_a_hashed_token_reads_back_and_matches_only_its_token() -> None:
    stored = str(hash_token("s3cret", n=CHEAP))
    assert stored.startswith("scrypt$n=256,r=8,p=1$") and "s3cret" not in stored
    secret = parse_token_hash(stored)
    assert secret.matches("s3cret") and not secret.matches("s3cret ") and not secret.matches("")
    assert str(hash_token("s3cret", n=CHEAP)) != stored  # salted: the same token hashes differently


@pytest.mark.parametrize("text, needle", [
    ("s3cret", "is not of the form"),
    ("scrypt$n=16384$AAAA$AAAA", "unreadable"),
    ("scrypt$n=1000,r=8,p=1$AAAAAAAAAAA=$" + "A" * 44, "out of range"),
    ("scrypt$n=256,r=8,p=1$AA==$" + "A" * 44, "shorter than 8 bytes"),
])
def test_a_malformed_token_hash_is_refused_with_a_sentence(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_token_hash(text)


def test_the_throttle_blocks_a_source_after_its_limit_of_wrong_tokens_and_forgets_it_later() -> None:
    throttle = Throttle(limit=3, window_s=60, block_s=30, max_sources=2)
    assert [throttle.failed("10.0.0.9", t) for t in (0, 1, 2)] == [False, False, True]
    assert throttle.blocked_for("10.0.0.9", 10) == 22 and throttle.blocked_for("10.0.0.8", 10) == 0
    assert throttle.blocked_for("10.0.0.9", 33) == 0
    for source in ("a", "b", "c"):  # bounded: the oldest source is forgotten
        throttle.failed(source, 40)
    assert throttle.blocked_for("10.0.0.9", 20) == 0


def test_a_grpc_peer_is_a_source_without_its_port() -> None:
    assert source_of("ipv4:10.0.0.5:41234") == "10.0.0.5"
    assert source_of("ipv6:[::1]:41234") == "[::1]"
    assert source_of("unix:/tmp/sock") == "unix:/tmp/sock"


VM = Attachment("blue", "10.1.0.1", hash_token("right", n=CHEAP))


async def test_the_gate_verifies_a_token_once_then_remembers_it_per_vm() -> None:
    gate = TokenGate(Throttle(limit=2, block_s=60))
    await asyncio.gather(*(gate.check(VM, "right", "10.0.0.1") for _ in range(5)))  # one scrypt among them
    with pytest.raises(Unauthenticated, match="spoofed or the token is wrong"):
        await gate.check(VM, "wrong", "10.0.0.9")
    with pytest.raises(Unauthenticated):
        await gate.check(VM, "wrong-again", "10.0.0.9")
    other = Attachment("blue", "10.1.0.2", PlainToken("its-own"))
    with pytest.raises(Overloaded, match="too many wrong tokens came from this address"):
        await gate.check(other, "its-own", "10.0.0.9")  # blocked: not even a right token is checked
    await gate.check(other, "its-own", "10.0.0.1")  # another source goes on
    assert gate.wrong == 2


async def test_a_known_token_passes_even_from_a_throttled_source() -> None:
    gate = TokenGate(Throttle(limit=1, block_s=60))
    await gate.check(VM, "right", "10.0.0.1")
    with pytest.raises(Unauthenticated):
        await gate.check(VM, "guess", "10.0.0.1")
    await gate.check(VM, "right", "10.0.0.1")  # a guesser from its address cannot lock the VM out


async def test_token_checks_waiting_at_once_are_bounded() -> None:
    gate = TokenGate(Throttle(limit=1000), max_pending=2)
    checks = [asyncio.ensure_future(gate.check(VM, f"guess-{i}", "10.0.0.9")) for i in range(5)]
    results = await asyncio.gather(*checks, return_exceptions=True)
    assert [type(r) for r in results] == [Unauthenticated] * 2 + [Overloaded] * 3
    assert "token checks are already waiting" in str(results[2])


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "consumer.toml"
    path.write_text(body)
    return path


def entry(network: str = "blue", address: str = "10.1.0.1", secret: str = 'token = "t"') -> str:
    return f'[[vms]]\nnetwork = "{network}"\naddress = "{address}"\n{secret}\n\n'


@pytest.mark.parametrize("body, needle", [
    (entry() + entry(), r"vms\[1\]: consumer VM blue/10.1.0.1 is listed twice"),
    (entry(network="blue/x"), r"vms\[0\]: network 'blue/x' may hold only"),
    (entry(network="n" * 64), r"vms\[0\]: network is 64 characters long"),
    (entry(address="10.1.0.300"), r"vms\[0\]: .*10.1.0.300"),
    (entry(secret='token = "t"\ntoken_hash = "x"'), "has both token and token_hash"),
    (entry(secret=""), "has no token_hash"),
    (entry(secret='token_hash = "md5$abc"'), "is not of the form"),
    ("vms = 3\n", "vms must be a list"),
])
def test_a_consumer_config_it_cannot_trust_is_refused_in_one_line_naming_the_entry(
        tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as refused:
        load_attachments(write(tmp_path, body))
    assert "\n" not in str(refused.value)


def test_a_config_reads_hashed_and_plain_tokens_and_says_which_are_plain(tmp_path: Path) -> None:
    hashed = f'token_hash = "{hash_token("h", n=CHEAP)}"'
    attached = load_attachments(write(tmp_path, entry(secret=hashed) + entry(address="10.1.0.2")))
    assert plaintext(attached) == ["blue/10.1.0.2"]
    assert isinstance(attached["blue/10.1.0.2"].secret, PlainToken)  # type: ignore[index]
    assert attached["blue/10.1.0.1"].secret.matches("h")  # type: ignore[index]


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="--max-stream-requests must be at least 1"):
        Limits(stream_requests=0)


def test_token_hash_prints_a_hash_of_the_token_on_stdin(monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("tok-1\n"))
    assert main(["token", "hash"]) == 0
    printed = capsys.readouterr().out.strip()
    assert parse_token_hash(printed).matches("tok-1") and "tok-1" not in printed


def test_a_bad_host_id_is_one_line(capsys) -> None:
    assert main(["consumer-host", "--host-id", "c/1", "--registry", "127.0.0.1:1", "--config", "/x.toml",
                 "--etcd-endpoints", "127.0.0.1:1", "--insecure"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("leasenet: --host-id") and "'c/1'" in err and err.count("\n") == 1


INTERNAL = ("127.0.0.1", "p1", "10.1.1.", "Error", "Exception", "consumer host 'c1'", "etcd3")


@pytest.mark.parametrize("error", [
    StoreUnavailable("leasing agent 127.0.0.1:7100 is unavailable: etcd3 lease grant failed"),
    ProducerUnavailable("producer hosts are re-registering (p1 at 127.0.0.1:7300)"),
    ClaimConflict("consumer VM blue/10.1.0.1 already holds lease 7 through consumer host 'c1'"),
    LeasenetError("leasing agent 127.0.0.1:7100 failed the call with INTERNAL: KeyError('x')"),
])
def test_a_leasing_refusal_reaches_a_consumer_vm_without_internal_names(error: LeasenetError) -> None:
    refusal = lease_refused(error, "echo", "10.1.0.1")
    assert refusal.code == error.code and "'echo'" in refusal.message
    assert not [word for word in INTERNAL if word in refusal.message], refusal.message


def test_a_leasing_refusal_about_the_tenants_own_request_keeps_its_sentence() -> None:
    shortfall = PoolExhausted("service 'echo' has 0 free producer VM(s) but 2 are needed (short by 2)")
    assert lease_refused(shortfall, "echo", "10.1.0.1").message == shortfall.message


@pytest.mark.parametrize("code", [Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.INTERNAL, Status.NOT_FOUND,
                                  Status.PERMISSION_DENIED])
def test_a_producer_hosts_answer_reaches_a_consumer_vm_in_our_words(code: Status) -> None:
    error = producer_answer(code, "producer VM 10.1.1.3 on p1 (127.0.0.1:7300): RuntimeError('boom')", 42)
    assert error.code == code and "request 42" in error.message
    assert not [word for word in INTERNAL if word in error.message], error.message
    assert producer_answer(Status.INVALID_ARGUMENT, "kv: no such key", 1).message == "kv: no such key"
