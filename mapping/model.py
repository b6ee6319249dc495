"""Typed domain records of the VM mapping repository. No I/O, no protobuf.

`revision` fields are etcd metadata (the key's create revision), filled in when a record is
read back; they are never part of the stored value.
"""

from __future__ import annotations

import enum
import random
import ipaddress
from dataclasses import dataclass, field
from typing import NewType

HostId = NewType("HostId", str)
VmId = NewType("VmId", str)  # "<network>/<address>": unique because addresses are unique per network
LeaseId = NewType("LeaseId", int)  # a pool's id (its lease, in the API): since key schema v2 not an etcd lease id

MAX_VNI = (1 << 24) - 1
# etcd's default --max-txn-ops is 128; a grant compares 2 keys per VM (its record, its claim), the pool key,
# one quota slot per scope and the consumer host's record: 2n + 5 <= 128
MAX_MIN_POOL = 61
# quotas count leases (pools): safe defaults, large enough for `leasenet bench --scale` (2,000 pools
# over four consumer hosts); a cluster config may set others (mapping/config.py)
DEFAULT_POOLS_PER_NETWORK = 10_000
DEFAULT_POOLS_PER_CONSUMER_HOST = 2_500
DEFAULT_POOLS_PER_CONSUMER_VM = 64
MAX_QUOTA = 1_000_000


def vm_id(network: str, address: str) -> VmId:
    return VmId(f"{network}/{address}")


def new_pool_id(rng: random.Random) -> LeaseId:
    """A pool's id: random, positive, 63 bits (shown in hex like etcd lease ids were). Ids are never
    looked up cluster-wide: a pool is found by its key (consumer host, service, consumer VM), so a
    collision of two pools' ids could only confuse one consumer host's own bookkeeping (2^-63)."""
    return LeaseId(rng.getrandbits(63) or 1)


def lease_hex(lease_id: int) -> str:
    return format(lease_id, "x")


def parse_lease_hex(text: str) -> LeaseId:
    try:
        value = int(text, 16)
    except ValueError:
        raise ValueError(f"pool id {text!r} is not a hexadecimal pool id") from None
    if value <= 0:
        raise ValueError(f"pool id {text!r} is not a valid pool id")
    return LeaseId(value)


def parse_ipv4(text: str, what: str = "address") -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IPv4 address") from None


def parse_target(text: str) -> tuple[str, int]:
    """'10.1.255.1:7' -> ('10.1.255.1', 7), with a sentence on bad input."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target {text!r} is not VIP:port (e.g. 10.1.255.1:7)")
    return parse_ipv4(host, "target VIP"), int(port)


class HostKind(enum.StrEnum):
    PRODUCER = "producer"
    CONSUMER = "consumer"
    REGISTRY = "registry"  # a leasing agent: its address, under its liveness lease (ownership, mapping/ownership.py)


class QuotaScope(enum.StrEnum):
    """What a quota counts leases of: a network, a consumer host, a consumer VM."""

    NETWORK = "network"
    CONSUMER_HOST = "consumer-host"
    CONSUMER_VM = "consumer-vm"


@dataclass(frozen=True, slots=True)
class Quotas:
    """How many leases (pools) may be held at once in a network, by one consumer host, by one consumer VM."""

    pools_per_network: int = DEFAULT_POOLS_PER_NETWORK
    pools_per_consumer_host: int = DEFAULT_POOLS_PER_CONSUMER_HOST
    pools_per_consumer_vm: int = DEFAULT_POOLS_PER_CONSUMER_VM

    def __post_init__(self) -> None:
        for name in ("pools_per_network", "pools_per_consumer_host", "pools_per_consumer_vm"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_QUOTA:
                raise ValueError(f"quota {name} must be a whole number from 1 to {MAX_QUOTA}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    vni: int
    quotas: Quotas = field(default_factory=Quotas)
    subnet: str = ""  # optional CIDR: when set, every VM and VIP address of the network must be in it

    def __post_init__(self) -> None:
        if not 0 < self.vni <= MAX_VNI:
            raise ValueError(f"network {self.name!r}: VNI {self.vni} is not a 24-bit value")
        if self.subnet:
            try:
                ipaddress.IPv4Network(self.subnet)
            except ValueError:
                raise ValueError(f"network {self.name!r}: subnet {self.subnet!r} is not an IPv4 CIDR "
                                 "(e.g. 10.1.0.0/16)") from None

    def check_address(self, address: str, what: str = "address") -> str:
        """`address` if it is an IPv4 address of this network, else ValueError with a sentence."""
        address = parse_ipv4(address, what)
        if self.subnet and ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(self.subnet):
            raise ValueError(f"{what} {address} is not in network {self.name!r} ({self.subnet})")
        return address


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    min_pool: int = 1
    max_pool: int = 4
    lease_ttl_s: int = 10  # the longest a pool outlives its consumer host (that host's liveness TTL may not exceed it)
    idle_release_s: float = 30.0
    max_pools_per_consumer: int = 0  # 0 = the network's pools_per_consumer_vm; else the lower of the two

    def __post_init__(self) -> None:
        if not 1 <= self.min_pool <= self.max_pool:
            raise ValueError(f"lease policy needs 1 <= min_pool <= max_pool, got {self.min_pool}..{self.max_pool}")
        if self.min_pool > MAX_MIN_POOL:
            raise ValueError(f"min_pool {self.min_pool} is too large: a grant is one etcd transaction, which holds "
                             f"at most 128 operations (2 per VM + 5), so min_pool can be at most {MAX_MIN_POOL}")
        if self.lease_ttl_s < 2:
            raise ValueError(f"lease_ttl_s must be at least 2 s, got {self.lease_ttl_s}")
        if self.idle_release_s <= 0:
            raise ValueError(f"idle_release_s must be positive, got {self.idle_release_s}")
        if not 0 <= self.max_pools_per_consumer <= MAX_QUOTA:
            raise ValueError(f"max_pools_per_consumer must be from 0 (the network's quota) to {MAX_QUOTA}, "
                             f"got {self.max_pools_per_consumer}")


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    network: str
    vip: str
    port: int
    policy: LeasePolicy = field(default_factory=LeasePolicy)

    @property
    def target(self) -> str:
        return f"{self.vip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Host:
    host_id: HostId
    kind: HostKind
    address: str
    draining: bool = False
    revision: int = 0
    # the host's liveness lease and its TTL: a consumer host's pools hang on it (one lease per
    # consumer host, however many pools it holds); 0 in records written before schema v2's hosts
    lease: int = 0
    ttl_s: int = 0
    version: str = ""  # what the process announced (wire/version.py); "" for one from before versions


@dataclass(frozen=True, slots=True)
class ProducerVm:
    network: str
    address: str
    host_id: HostId
    service: str
    handler: str = "echo"
    revision: int = 0  # the incarnation: a re-registered VM gets a new one
    # a lessee ran a call on it (a command VM reset by restart): no grant may choose it again
    # until its host withdraws it, restarts it and registers a new incarnation
    used: bool = False

    @property
    def vm_id(self) -> VmId:
        return vm_id(self.network, self.address)


@dataclass(frozen=True, slots=True)
class ConsumerRef:
    """A consumer VM as the leasing agent sees it."""

    network: str
    address: str
    host_id: HostId

    @property
    def vm_id(self) -> VmId:
        return vm_id(self.network, self.address)


@dataclass(frozen=True, slots=True)
class Claim:
    """'Producer VM `vm` is leased to consumer VM `consumer_vm`': at most one per producer VM."""

    vm: VmId
    lease_id: LeaseId
    service: str
    consumer_vm: VmId
    consumer_host: HostId
    vm_revision: int  # the VM incarnation that was claimed
    revision: int = 0  # create revision: the fencing token carried in every tunnel frame
    host_id: HostId = HostId("")  # the producer host whose VM record was claimed (the claim's key names it)


@dataclass(frozen=True, slots=True)
class Pool:
    """The lease: one per (consumer VM, service), `lease_id` its pool id; its keys hang on its
    consumer host's liveness lease, so it lives until released or until that host dies."""

    service: str
    consumer_vm: VmId
    consumer_host: HostId
    lease_id: LeaseId
    ttl_s: int
    revision: int = 0


@dataclass(frozen=True, slots=True)
class QuotaSlot:
    """One lease counted against one quota: slot `index` (0 .. limit-1) of `subject` (a network, a
    consumer host id or a consumer VM id), `lease_id` the pool's id; it ends with its pool (released in
the same transaction, or expired with the consumer host's lease)."""

    scope: QuotaScope
    subject: str
    index: int
    lease_id: LeaseId


Record = Network | Service | Host | ProducerVm | Claim | Pool | QuotaSlot
