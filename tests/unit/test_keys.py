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


def writers(key: str, owners: list[tuple[HostKind, str]]) -> list[str]:
    """Who may write `key`: the registry kind, or each (kind, host) by the keys it owns."""
    def within(r: keys.KeyRange) -> bool:
        return key.startswith(r.key) if r.prefix else key == r.key
    kind = ["registry"] if any(key.startswith(p) for p in keys.WRITE_PREFIXES["registry"]) else []
    return kind + [f"{k.value}/{o}" for k, o in owners if k is not HostKind.REGISTRY
                   and any(within(r) for r in keys.owned_ranges(k, o))]


def test_every_record_key_is_written_by_exactly_one_writer() -> None:
    """etcd RBAC gives the registries their prefixes and each host its own keys: no key may fall
    under two writers, nor a producer host's under another producer host's (p1 and p10 included)."""
    owners = [(HostKind.PRODUCER, "p1"), (HostKind.PRODUCER, "p10"), (HostKind.CONSUMER, "c1"),
              (HostKind.PRODUCER, "fleet")]
    records = [
        (Network("blue", 100), "registry"),
        (Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(1, 4, 10, 30.0, 2)), "registry"),
        (Host(HostId("p1"), HostKind.PRODUCER, "127.0.0.1:7100"), "producer/p1"),
        (Host(HostId("p10"), HostKind.PRODUCER, "127.0.0.1:7100"), "producer/p10"),
        (Host(HostId("c1"), HostKind.CONSUMER, "127.0.0.1:7200"), "consumer/c1"),
        (Host(HostId("r1"), HostKind.REGISTRY, "127.0.0.1:7000"), "registry"),
        (ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo"), "producer/p1"),
        (ProducerVm("blue", "10.1.1.1", HostId("p10"), "echo"), "producer/p10"),
        (Claim(VmId("blue/10.1.1.1"), LeaseId(1), "echo", VmId("blue/10.1.0.1"), HostId("c1"), 4), "registry"),
        (Pool("echo", VmId("blue/10.1.0.1"), HostId("c1"), LeaseId(1), 10), "registry"),
    ]
    for record, want in records:
        assert writers(keys.key_of(record), owners) == [want], record


def test_replicas_of_a_shared_identity_write_under_its_name_only() -> None:
    fleet = keys.owned_ranges(HostKind.PRODUCER, "fleet", replicas=True)
    replica = ProducerVm("blue", "10.3.0.1", HostId("fleet.4f2a"), "echo")
    host = Host(HostId("fleet.4f2a"), HostKind.PRODUCER, "10.0.0.4:7100")
    assert all(any(keys.key_of(r).startswith(k.key) for k in fleet if k.prefix) for r in (replica, host))
    assert writers(keys.key_of(Host(HostId("fleetwood"), HostKind.PRODUCER, "a")), [(HostKind.PRODUCER, "fleet")]) == []
    assert keys.covers("fleet", "fleet.4f2a") and keys.covers("fleet", "fleet") and not keys.covers("fleet", "fleetwood")


def test_a_vm_key_names_its_host_and_its_body_may_not_name_another() -> None:
    vm = ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo", revision=4)
    assert keys.key_of(vm) == keys.VMS + "p1/blue/10.1.1.1"
    assert keys.vm_of_key(keys.key_of(vm)) == ("p1", "blue/10.1.1.1")
    forged = keys.encode(ProducerVm("blue", "10.1.1.1", HostId("p2"), "echo"))
    assert keys.decode(keys.key_of(vm), forged, 4) is None
    assert keys.decode(keys.VMS + "blue/10.1.1.1", keys.encode(vm)) is None  # the layout before hosts owned VMs


def test_the_oldest_record_of_an_address_is_the_vm_and_the_younger_waits() -> None:
    state = ClusterState()
    first = ProducerVm("blue", "10.1.1.1", HostId("p1"), "echo", revision=5)
    second = ProducerVm("blue", "10.1.1.1", HostId("p2"), "echo", revision=9)
    for record in (second, first):  # the order the replica learns them in does not matter
        state.apply(keys.key_of(record), record)
    assert state.vms[first.vm_id] == first and state.older_record(second) == first
    assert state.older_record(first) is None and state.vms_by_host == {"p1": {first.vm_id}}
    assert state.get(keys.key_of(second)) == second and len(state.all_vm_records()) == 2
    state.apply(keys.key_of(first), None)  # the first host went away: the other one is the VM now
    assert state.vms[first.vm_id] == second and state.vms_by_host == {"p2": {first.vm_id}}
    state.apply(keys.key_of(second), None)
    assert state.vms == {} and state.vm_records == {} and state.vms_by_host == {}


def test_a_host_key_finds_only_the_host_of_that_kind() -> None:
    state = ClusterState()
    producer = Host(HostId("h1"), HostKind.PRODUCER, "127.0.0.1:7100")
    state.apply(keys.key_of(producer), producer)
    assert state.get(keys.host_key(HostKind.PRODUCER, "h1")) == producer
    assert state.get(keys.host_key(HostKind.CONSUMER, "h1")) is None
    state.apply(keys.host_key(HostKind.CONSUMER, "h1"), None)  # a delete of the other kind's key
    assert state.hosts == {"h1": producer}
