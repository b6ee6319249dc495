"""Versions and compatibility (wire/version.py, mapping/schema.py): what a build announces, which
peers work together, and the etcd key schema a process refuses."""

from __future__ import annotations

import pytest

from mapping import keys, schema
from mapping.model import Host, HostId, HostKind
from mapping.store.memory import MemoryStore
from wire import version
from wire.errors import VersionMismatch
from wire.version import LEGACY, Protocol, Speaks, Versions, check_peer, mismatch, parse, schema_mismatch

N = parse("0.1.0 tunnel=1 leasing=1 keys=1")
N1 = parse("0.2.0 tunnel=1-2 leasing=1-2 keys=1")  # the next release: brings version 2, still speaks 1
N2 = parse("0.3.0 tunnel=2-3 leasing=2-3 keys=1")  # two releases on: version 1 dropped


def test_an_announcement_reads_back_as_written() -> None:
    assert str(N1) == "0.2.0 tunnel=1-2 leasing=1-2 keys=1"
    assert parse(str(N1)) == N1
    assert N1.tunnel == Versions(1, 2) and N1.keys == 1


def test_what_an_announcement_leaves_out_is_the_base_s_and_unknown_protocols_are_skipped() -> None:
    assert parse("0.9.0") == Speaks("0.9.0", LEGACY.tunnel, LEGACY.leasing, LEGACY.keys)
    assert parse("0.9.0 tunnel=3 gossip=7", base=N1) == Speaks("0.9.0", Versions(3, 3), N1.leasing, 1)


@pytest.mark.parametrize("text", ["", "tunnel=1", "0.1.0 tunnel", "0.1.0 tunnel=x", "0.1.0 tunnel=2-1",
                                  "0.1.0 keys=0", "0.1.0 " + "x" * 300])
def test_an_unreadable_announcement_is_refused_with_a_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="version|announcement|range"):
        parse(text)


def test_a_caller_that_says_nothing_is_a_build_from_before_versions() -> None:
    assert version.peer(()) is LEGACY
    assert version.peer([("other", "x"), (version.METADATA_KEY, "0.2.0 tunnel=1-2")]).tunnel == Versions(1, 2)


def test_neighbouring_releases_work_together_and_overlapping_ranges_decide() -> None:
    for protocol in Protocol:
        assert mismatch(protocol, N, N1, "us", "them") is None
        assert mismatch(protocol, N1, N, "us", "them") is None
        assert mismatch(protocol, N1, N2, "us", "them") is None
        assert mismatch(protocol, N, LEGACY, "us", "them") is None


def test_a_pair_with_no_version_in_common_is_refused_with_both_versions_named() -> None:
    why = mismatch(Protocol.TUNNEL, N, N2, "producer host p1", "consumer host c1")
    assert why == ("consumer host c1 (leasenet 0.3.0, tunnel protocol 2-3) and producer host p1 (leasenet 0.1.0, "
                   "tunnel protocol 1) have no tunnel protocol version in common: refused; upgrade the older one")
    assert mismatch(Protocol.LEASING, N2, N, "the registry", "consumer/c1") is not None


def test_a_server_refuses_a_caller_by_its_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "_announced", None)
    version.announce_as("0.1.0 tunnel=1 leasing=1")
    refused = check_peer(Protocol.TUNNEL, [(version.METADATA_KEY, str(N2))], "producer host p1", "consumer host c1")
    assert refused is not None and refused.error is VersionMismatch and "2-3" in refused.message
    assert check_peer(Protocol.TUNNEL, [(version.METADATA_KEY, str(N1))], "p1", "c1") is None
    garbled = check_peer(Protocol.LEASING, [(version.METADATA_KEY, "tunnel=9")], "the registry", "consumer/c1")
    assert garbled is not None and "cannot read" in garbled.message


def test_a_test_may_announce_another_version_over_the_build_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "_announced", None)
    built = version.ours()
    assert built == version.build() and built.keys == version.KEY_SCHEMA
    bumped = version.announce_as("9.9.9 tunnel=1-2")
    assert bumped == Speaks("9.9.9", Versions(1, 2), built.leasing, built.keys)
    assert version.ours() == bumped and version.metadata() == ((version.METADATA_KEY, str(bumped)),)


def test_the_key_schema_is_the_version_of_the_keys_root() -> None:
    assert keys.ROOT == f"/leasenet/v{version.KEY_SCHEMA}/" and keys.SCHEMA == version.KEY_SCHEMA
    assert not keys.SCHEMA_KEY.startswith(keys.ROOT)  # every schema's processes find the marker
    assert keys.decode_schema(keys.encode_schema(2, "0.3.0")) == (2, "0.3.0")
    assert keys.decode_schema(b"junk") is None


def test_a_host_record_carries_its_version_only_when_known() -> None:
    old = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100")
    new = Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100", version=str(N1))
    assert b"version" not in keys.encode(old)  # a record of before versions reads the same
    assert keys.decode(keys.key_of(new), keys.encode(new)) == new
    assert keys.decode(keys.key_of(old), b'{"kind":"producer","address":"127.0.0.1:7100","draining":false}') == old


def test_another_key_schema_is_refused_naming_both() -> None:
    assert schema_mismatch(N, 1, "0.1.0") is None
    assert schema_mismatch(parse("0.5.0 keys=2"), 1, "0.1.0") == (
        "etcd holds key schema 1 (written by leasenet 0.1.0) and this process (leasenet 0.5.0) reads key schema 2 "
        "only: it would misread the records; refused")


async def test_the_first_registry_marks_the_schema_and_a_process_of_another_refuses_to_start() -> None:
    store = MemoryStore()
    await schema.check(store, N)  # no marker yet: a host may start before any registry
    assert await store.get(keys.SCHEMA_KEY) is None
    await schema.check(store, N, mark=True)
    await schema.check(store, N1, mark=True)  # same schema: the first writer's marker stays
    held = await store.get(keys.SCHEMA_KEY)
    assert held is not None and keys.decode_schema(held.value) == (1, "0.1.0")
    with pytest.raises(VersionMismatch, match="etcd holds key schema 1 .* reads key schema 2"):
        await schema.check(store, parse("0.5.0 keys=2"))
    await store.put(keys.SCHEMA_KEY, b"not a marker")
    with pytest.raises(VersionMismatch, match="cannot be read"):
        await schema.check(store, N)
