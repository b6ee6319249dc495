"""The etcd key schema is a stable on-disk format: records survive a round trip."""

from __future__ import annotations

from mapping import keys
from mapping.state import ClusterState
from mapping.model import Claim, Host, HostId, HostKind, LeaseId, LeasePolicy, Network, Pool, ProducerVm, Service, VmId


def test_every_record_round_trips_through_its_key_and_value() -> None:
    records = [
        Network("blue", 100),
        Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(1, 4, 10, 30.0, 2)),
        Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100", draining=True, revision=3),
        ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo", "kv", revision=4),
        Claim(VmId("blue/10.1.1.1"), LeaseId(0x1F), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 4, revision=9),
        Pool("echo", VmId("blue/10.1.0.1"), HostId("c1"), LeaseId(0x1F), 10, revision=9),
    ]
    for record in records:
        key = keys.key_of(record)
        assert key.startswith(keys.ROOT)
        assert keys.decode(key, keys.encode(record), getattr(record, "revision", 0)) == record


def test_keys_outside_the_schema_or_garbage_values_are_ignored() -> None:
    assert keys.decode("/other/thing", b"{}") is None
    assert keys.decode(keys.ROOT + "hosts/producer/p1", b"not json") is None
    assert keys.decode(keys.ROOT + "hosts/p1", b'{"kind":"producer","address":"a"}') is None
    assert keys.decode(keys.ROOT + "unknown/x", b"{}") is None


def test_host_records_of_each_kind_live_under_that_kind_s_prefix() -> None:
    producer = Host(HostId("h1"), HostKind.PRODUCER, "127.0.0.1:7100")
    consumer = Host(HostId("h2"), HostKind.CONSUMER, "127.0.0.1:7200")
    assert keys.key_of(producer) == keys.PRODUCER_HOSTS + "h1"
    assert keys.key_of(consumer) == keys.CONSUMER_HOSTS + "h2"


def test_every_record_key_is_written_by_exactly_one_kind() -> None:
    """etcd RBAC gives each kind write access to its prefixes only: no key may fall under two."""
    records = [
        Network("blue", 100),
        Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(1, 4, 10, 30.0, 2)),
        Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100"),
        Host(HostId("c1"), HostKind.CONSUMER, "127.0.0.1:7200"),
        ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo"),
        Claim(VmId("blue/10.1.1.1"), LeaseId(1), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 4),
        Pool("echo", VmId("blue/10.1.0.1"), HostId("c1"), LeaseId(1), 10),
    ]
    expected = {Network: "registry", Service: "registry", ProducerVm: "producer", Claim: "registry",
                Pool: "registry"}
    for record in records:
        writers = [kind for kind, prefixes in keys.WRITE_PREFIXES.items()
                   if any(keys.key_of(record).startswith(p) for p in prefixes)]
        want = record.kind.value if isinstance(record, Host) else expected[type(record)]
        assert writers == [want], (record, writers)


def test_a_host_key_finds_only_the_host_of_that_kind() -> None:
    state = ClusterState()
    producer = Host(HostId("h1"), HostKind.PRODUCER, "127.0.0.1:7100")
    state.apply(keys.key_of(producer), producer)
    assert state.get(keys.host_key(HostKind.PRODUCER, "h1")) == producer
    assert state.get(keys.host_key(HostKind.CONSUMER, "h1")) is None
    state.apply(keys.host_key(HostKind.CONSUMER, "h1"), None)  # a delete of the other kind's key
    assert state.hosts == {"h1": producer}
