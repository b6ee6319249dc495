"""The etcd key schema and value codec: a stable on-disk format (values are JSON so that
`etcdctl get --prefix /leasenet/v2/` is readable). Change it only with a new version prefix.

    /leasenet/v2/networks/<name>                          {"vni","quotas","subnet"}
    /leasenet/v2/services/<name>                          {"network","vip","port","policy"}
    /leasenet/v2/hosts/<kind>/<host_id>                   {"kind","address","draining","lease","ttl_s"[,"version"]}  host liveness lease
                                                          (kind registry: a leasing agent, its own liveness lease)
    /leasenet/v2/vms/<producer host>/<network>/<address>  {"host_id","service","handler"[,"used"]}    producer host's lease
    /leasenet/v2/claims/<producer host>/<network>/<address>
                                                          {"lease_id","service","consumer_vm","consumer_host","vm_revision"}
    /leasenet/v2/pools/<consumer host>/<service>/<network>/<address>         {"lease_id","ttl_s"}   (the pool)
    /leasenet/v2/pools/<consumer host>/<service>/<network>/<address>/<producer host>/<network>/<address>
                                                          the claim again, as a member of that pool (its mirror)
    /leasenet/v2/quotas/<scope>/<subject>/<index>         {"lease_id"}   (one per scope per pool)

Claims, pools, members and quota slots hang on the consumer host's liveness lease (one per consumer
host, however many pools: `lease_id` is the pool's own id). Keys are laid out by READER as well as by
writer (issue 19): a producer host watches `vms/<its id>/` and `claims/<its id>/`, a consumer host
`pools/<its id>/` (its pools and their members: a claim's mirror, written and deleted in the same
transaction, so it carries the same create revision, the fencing token), each beside the small
shared prefixes `networks/`, `services/`, `hosts/` (mapping/scopes.py); a grant anywhere costs no
host that is not party to it. Version 1 (`/leasenet/v1/`, claims by VM and a pool per etcd lease) is
not read: nothing stored outlives the hosts' leases, so a cluster moves by restarting on v2.

Each writer's keys share prefixes, so etcd RBAC can give each writer write access to exactly its
own: registries as a kind (WRITE_PREFIXES, one role bootstrapped by `leasenet etcd`), producer and
consumer hosts each its own (`owned_ranges`: its host record, and a producer host's VMs under
`vms/<host_id>/`, one role per host made by `leasenet enrol`). A VM's id stays
`<network>/<address>`: two hosts may hold a record for one address, and the oldest (lowest create
revision) is the VM (mapping/state.py). Host ids must stay unique across every kind (registries too).

    /leasenet/schema                                      {"schema","release"}   no lease

The key schema's marker (mapping/schema.py): outside every version's ROOT, so that a process of any
schema finds it; the first registry writes it, and a process of another schema refuses to start.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from wire.version import KEY_SCHEMA
from mapping.model import (
    Claim,
    Host,
    HostId,
    HostKind,
    LeaseId,
    LeasePolicy,
    Network,
    Pool,
    ProducerVm,
    Quotas,
    QuotaScope,
    QuotaSlot,
    Record,
    Service,
    VmId,
)

ROOT = "/leasenet/v2/"
SCHEMA = KEY_SCHEMA  # the N of ROOT's /leasenet/vN/ (wire/version.py; tests/unit/test_version.py ties them)
SCHEMA_KEY = "/leasenet/schema"  # the marker: which key schema this etcd holds (mapping/schema.py)
READ_PREFIXES = (ROOT, SCHEMA_KEY)  # what registries and operators read (etcd RBAC, leasenet/etcd.py)
NETWORKS = ROOT + "networks/"
SERVICES = ROOT + "services/"
HOSTS = ROOT + "hosts/"
PRODUCER_HOSTS = HOSTS + HostKind.PRODUCER.value + "/"
CONSUMER_HOSTS = HOSTS + HostKind.CONSUMER.value + "/"
REGISTRIES = HOSTS + HostKind.REGISTRY.value + "/"  # the live leasing agents, who share the services out
VMS = ROOT + "vms/"
CLAIMS = ROOT + "claims/"
POOLS = ROOT + "pools/"
QUOTAS = ROOT + "quotas/"
# what every host reads: the cluster config and the host records (they change when a host comes, goes
# or drains, never per grant); each host reads its own share besides (read_ranges, mapping/scopes.py)
SHARED_PREFIXES = (NETWORKS, SERVICES, HOSTS)
KIND_READ_PREFIXES: dict[str, tuple[str, ...]] = {
    "registry": READ_PREFIXES,
    "operator": READ_PREFIXES,
    "producer": (*SHARED_PREFIXES, SCHEMA_KEY),
    "consumer": (*SHARED_PREFIXES, SCHEMA_KEY),
}

# The key prefixes each kind of process writes as a kind (every kind reads all of ROOT): registries
# share what registries own; producer and consumer hosts write nothing as a kind, each host only its
# own records (owned_ranges). Revoking an etcd lease needs write access to every key attached to it,
# so a registry cannot revoke a producer host's liveness lease, a host a pool's lease, nor one host
# another's.
WRITE_PREFIXES: dict[str, tuple[str, ...]] = {
    "registry": (NETWORKS, SERVICES, CLAIMS, POOLS, QUOTAS, REGISTRIES, SCHEMA_KEY),
    "producer": (),
    "consumer": (),
    "operator": (),
}
REPLICA_SEPARATOR = "."  # host ids of a replicated identity's replicas: <identity id>.<replica>


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRange:
    """One key (`prefix` False) or every key starting with `key`: what an etcd permission names."""
    key: str
    prefix: bool = False


def owned_ranges(kind: HostKind, owner: str, *, replicas: bool = False) -> tuple[KeyRange, ...]:
    """The keys host `owner` of `kind` writes, and nothing else: its host record (one key) and, for a
    producer host, its VM records. `replicas`: the owner is an identity shared by the replicas of one
    service, whose host ids are `<owner>.<replica>` (docker's scaled producer service): each replica
    writes under its own host id, all of them under the identity's. Registries write as a kind."""
    if kind is HostKind.REGISTRY:
        return tuple(KeyRange(p, prefix=True) for p in WRITE_PREFIXES[kind.value])
    ranges = [KeyRange(host_key(kind, owner))]
    if kind is HostKind.PRODUCER:
        ranges.append(KeyRange(f"{VMS}{owner}/", prefix=True))
    if replicas:
        ranges.append(KeyRange(host_key(kind, owner + REPLICA_SEPARATOR), prefix=True))
        if kind is HostKind.PRODUCER:
            ranges.append(KeyRange(f"{VMS}{owner}{REPLICA_SEPARATOR}", prefix=True))
    return tuple(ranges)


def read_ranges(kind: HostKind, owner: str, *, replicas: bool = False) -> tuple[KeyRange, ...]:
    """What host `owner` reads besides the shared prefixes and the keys it writes: a producer host the
    claims on its VMs, a consumer host its pools and their members (registries write both)."""
    below = {HostKind.PRODUCER: CLAIMS, HostKind.CONSUMER: POOLS}.get(kind)
    if below is None:
        return ()
    return (KeyRange(f"{below}{owner}/", prefix=True),
            *((KeyRange(f"{below}{owner}{REPLICA_SEPARATOR}", prefix=True),) if replicas else ()))


def covers(identity_id: str, host_id: str) -> bool:
    """Host id `host_id` is the identity's own or one of its replicas' (not decided here: whether
    the identity was enrolled with replicas; etcd's role says that)."""
    return host_id == identity_id or host_id.startswith(identity_id + REPLICA_SEPARATOR)


def network_key(name: str) -> str:
    return NETWORKS + name


def service_key(name: str) -> str:
    return SERVICES + name


def host_key(kind: HostKind, host_id: str) -> str:
    return f"{HOSTS}{kind.value}/{host_id}"


def vm_key(host_id: str, vm: VmId | str) -> str:
    """A producer VM's record, under its host: only that host (its etcd role) may write it."""
    return f"{VMS}{host_id}/{vm}"


def vm_of_key(key: str) -> tuple[HostId, VmId] | None:
    """(host, VM id) of a `vms/` key, or None for any other key."""
    if not key.startswith(VMS):
        return None
    host, _, vm = key[len(VMS):].partition("/")
    return (HostId(host), VmId(vm)) if host and "/" in vm else None


def claim_key(host_id: str, vm: VmId | str) -> str:
    """A producer VM's claim, under the VM's producer host: the host watches its own claims only."""
    return f"{CLAIMS}{host_id}/{vm}"


def pool_key(consumer_host: str, service: str, consumer_vm: VmId | str) -> str:
    """A pool, under its consumer host: the host watches its own pools (and their members) only."""
    return f"{POOLS}{consumer_host}/{service}/{consumer_vm}"


def member_key(claim: Claim) -> str:
    """The claim's mirror under its pool: what the pool's consumer host sees of it."""
    return f"{pool_key(claim.consumer_host, claim.service, claim.consumer_vm)}/{claim.host_id}/{claim.vm}"


def is_member_key(key: str) -> bool:
    """A pool member's key (7 parts below pools/) rather than a pool's (4 parts)."""
    return key.startswith(POOLS) and key.count("/", len(POOLS)) == 6


def quota_slot_key(scope: QuotaScope, subject: str, index: int) -> str:
    return f"{QUOTAS}{scope.value}/{subject}/{index}"


def key_of(record: Record) -> str:
    match record:
        case Network():
            return network_key(record.name)
        case Service():
            return service_key(record.name)
        case Host():
            return host_key(record.kind, record.host_id)
        case ProducerVm():
            return vm_key(record.host_id, record.vm_id)
        case Claim():
            return claim_key(record.host_id, record.vm)
        case Pool():
            return pool_key(record.consumer_host, record.service, record.consumer_vm)
        case QuotaSlot():
            return quota_slot_key(record.scope, record.subject, record.index)
    raise TypeError(f"not a record: {record!r}")


def encode(record: Record) -> bytes:
    body: dict[str, Any]
    match record:
        case Network():
            body = {"vni": record.vni, "quotas": dataclasses.asdict(record.quotas), "subnet": record.subnet}
        case Service():
            body = {"network": record.network, "vip": record.vip, "port": record.port,
                    "policy": dataclasses.asdict(record.policy)}
        case Host():
            body = {"kind": record.kind.value, "address": record.address, "draining": record.draining}
            if record.lease:
                body |= {"lease": record.lease, "ttl_s": record.ttl_s}
            if record.version:  # omitted when unknown: a record of before versions reads the same
                body["version"] = record.version
        case ProducerVm():
            body = {"host_id": record.host_id, "service": record.service, "handler": record.handler}
            if record.used:  # omitted when false: a record of before the mark reads the same
                body["used"] = True
        case Claim():
            body = {"lease_id": record.lease_id, "service": record.service, "consumer_vm": record.consumer_vm,
                    "consumer_host": record.consumer_host, "vm_revision": record.vm_revision}
        case Pool():
            body = {"lease_id": record.lease_id, "ttl_s": record.ttl_s}
        case QuotaSlot():
            body = {"lease_id": record.lease_id}
        case _:
            raise TypeError(f"not a record: {record!r}")
    return _to_json(body).encode()


# json.dumps with these arguments makes an encoder per call: this one is made once (a grant encodes 8 records)
_to_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


_parse_json = json.JSONDecoder().decode  # json.loads less its per-call checks: this runs for every watch event


def decode(key: str, value: bytes, revision: int = 0) -> Record | None:
    """The record stored at `key`, or None for a key outside the schema (ignored, not fatal)."""
    if not key.startswith(ROOT):
        return None
    kind, _, rest = key[len(ROOT):].partition("/")
    try:
        body = _parse_json(value.decode())
        match kind:
            case "networks":
                return Network(name=rest, vni=int(body["vni"]), quotas=Quotas(**body.get("quotas", {})),
                               subnet=body.get("subnet", ""))
            case "services":
                return Service(name=rest, network=body["network"], vip=body["vip"], port=int(body["port"]),
                               policy=LeasePolicy(**body["policy"]))
            case "hosts":
                host_kind, _, host_id = rest.partition("/")
                if not host_id:
                    return None
                return Host(host_id=HostId(host_id), kind=HostKind(host_kind), address=body["address"],
                            draining=bool(body.get("draining", False)), revision=revision,
                            lease=int(body.get("lease", 0)), ttl_s=int(body.get("ttl_s", 0)),
                            version=str(body.get("version", "")))
            case "vms":
                host_id, _, vm = rest.partition("/")
                network, _, address = vm.partition("/")
                if not address or body["host_id"] != host_id:  # the key names its writer: the body may not differ
                    return None
                return ProducerVm(network=network, address=address, host_id=HostId(host_id),
                                  service=body["service"], handler=body.get("handler", "echo"), revision=revision,
                                  used=bool(body.get("used", False)))
            case "claims":
                host_id, _, vm = rest.partition("/")
                if "/" not in vm:
                    return None
                return _claim(body, HostId(host_id), VmId(vm), revision)
            case "pools":
                parts = rest.split("/")
                if len(parts) == 7:  # a member: the claim's mirror, which the key names in full
                    claim = _claim(body, HostId(parts[4]), VmId(f"{parts[5]}/{parts[6]}"), revision)
                    return claim if key == member_key(claim) else None
                if len(parts) != 4:
                    return None
                return Pool(service=parts[1], consumer_vm=VmId(f"{parts[2]}/{parts[3]}"), consumer_host=HostId(parts[0]),
                            lease_id=LeaseId(int(body["lease_id"])), ttl_s=int(body["ttl_s"]), revision=revision)
            case "quotas":
                scope, _, slot = rest.partition("/")
                subject, _, index = slot.rpartition("/")
                return QuotaSlot(scope=_SCOPES[scope], subject=subject, index=int(index),
                                 lease_id=LeaseId(int(body["lease_id"])))
    except (ValueError, KeyError, TypeError):
        return None
    return None


_SCOPES = {scope.value: scope for scope in QuotaScope}  # QuotaScope(text) is a slow call, and every grant has 3


def _claim(body: dict[str, Any], host_id: HostId, vm: VmId, revision: int) -> Claim:
    return Claim(vm=vm, lease_id=LeaseId(int(body["lease_id"])), service=body["service"],
                 consumer_vm=VmId(body["consumer_vm"]), consumer_host=HostId(body["consumer_host"]),
                 vm_revision=int(body["vm_revision"]), revision=revision, host_id=host_id)


def encode_schema(schema: int, release: str) -> bytes:
    """The marker's value: the key schema etcd holds and the release that wrote it first."""
    return json.dumps({"schema": schema, "release": release}, separators=(",", ":"), sort_keys=True).encode()


def decode_schema(value: bytes) -> tuple[int, str] | None:
    """(schema, release) of a marker, or None when it is not one."""
    try:
        body = json.loads(value)
        return int(body["schema"]), str(body.get("release", "?"))
    except (ValueError, KeyError, TypeError):
        return None
