"""The cluster configuration a registry publishes at start: overlay networks and services.

    [quotas]                         # optional: every network's default quotas (leases held at once)
    pools_per_network = 10000
    pools_per_consumer_host = 2500
    pools_per_consumer_vm = 64

    [[networks]]
    name = "blue"
    vni = 100
    subnet = "10.1.0.0/16"           # optional: VM and VIP addresses must be in it
    pools_per_consumer_vm = 8        # optional: overrides [quotas] for this network

    [[services]]
    name = "echo"
    network = "blue"
    target = "10.1.255.1:7"
    min_pool = 1
    max_pool = 4
    lease_ttl_s = 10
    idle_release_s = 30
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapping.model import LeasePolicy, Network, Quotas, Service, parse_target
from mapping.names import check_name

_POLICY_FIELDS = {"min_pool", "max_pool", "lease_ttl_s", "idle_release_s", "max_pools_per_consumer"}
_QUOTA_FIELDS = {"pools_per_network", "pools_per_consumer_host", "pools_per_consumer_vm"}


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    networks: list[Network]
    services: list[Service]


def _unknown(what: str, table: dict[str, Any], known: set[str]) -> None:
    if unknown := set(table) - known:
        raise ValueError(f"{what} has unknown field(s) {sorted(unknown)}")


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} {name!r} is defined twice")
        seen.add(name)


def _network(n: dict[str, Any], defaults: Quotas) -> Network:
    name = check_name("network name", str(n["name"]))
    _unknown(f"network {name!r}", n, {"name", "vni", "subnet"} | _QUOTA_FIELDS)
    quotas = Quotas(**{**dataclasses.asdict(defaults), **{k: v for k, v in n.items() if k in _QUOTA_FIELDS}})
    return Network(name=name, vni=int(n["vni"]), quotas=quotas, subnet=str(n.get("subnet", "")))


def _service(s: dict[str, Any], networks: dict[str, Network]) -> Service:
    name = check_name("service name", str(s["name"]))
    _unknown(f"service {name!r}", s, _POLICY_FIELDS | {"name", "network", "target"})
    network = networks.get(str(s["network"]))
    if network is None:
        raise ValueError(f"service {name!r} names network {s['network']!r}, which is not defined")
    vip, port = parse_target(str(s["target"]))
    network.check_address(vip, f"service {name!r}: VIP")
    policy = LeasePolicy(**{k: v for k, v in s.items() if k in _POLICY_FIELDS})
    return Service(name=name, network=network.name, vip=vip, port=port, policy=policy)


def parse_cluster_config(data: dict[str, Any], source: str = "cluster config") -> ClusterConfig:
    """Every name checked (mapping.names), no name defined twice, VIPs inside their network's subnet;
    `[quotas]` sets the default quotas of every network, a network's own fields override them."""
    try:
        _unknown("the cluster config", data, {"networks", "services", "quotas"})
        quota_table = data.get("quotas", {})
        _unknown("[quotas]", quota_table, _QUOTA_FIELDS)
        defaults = Quotas(**quota_table)
        networks = [_network(n, defaults) for n in data.get("networks", [])]
        _unique("network", [n.name for n in networks])
        by_name = {n.name: n for n in networks}
        services = [_service(s, by_name) for s in data.get("services", [])]
        _unique("service", [s.name for s in services])
    except KeyError as exc:
        raise ValueError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    targets = [(s.network, s.target) for s in services]
    if len(set(targets)) != len(targets):
        raise ValueError(f"{source}: two services share one target virtual address")
    return ClusterConfig(networks, services)


def to_toml(config: ClusterConfig) -> str:
    """The TOML a registry reads back as `config` (the demo, the bench and tests write theirs so)."""
    lines = []
    for n in config.networks:
        q = n.quotas
        lines += ["[[networks]]", f'name = "{n.name}"', f"vni = {n.vni}"]
        lines += [f'subnet = "{n.subnet}"'] if n.subnet else []
        lines += [f"pools_per_network = {q.pools_per_network}", f"pools_per_consumer_host = {q.pools_per_consumer_host}",
                  f"pools_per_consumer_vm = {q.pools_per_consumer_vm}", ""]
    for s in config.services:
        p = s.policy
        lines += ["[[services]]", f'name = "{s.name}"', f'network = "{s.network}"', f'target = "{s.target}"',
                  f"min_pool = {p.min_pool}", f"max_pool = {p.max_pool}", f"lease_ttl_s = {p.lease_ttl_s}",
                  f"idle_release_s = {p.idle_release_s}", f"max_pools_per_consumer = {p.max_pools_per_consumer}", ""]
    return "\n".join(lines)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict, or a ValueError with one sentence naming the file and the problem."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid TOML: {exc}") from None


def load_cluster_config(path: str | Path) -> ClusterConfig:
    return parse_cluster_config(read_toml(path, "cluster config"), str(path))
