"""The cluster configuration a registry publishes at start: overlay networks and services.

    [[networks]]
    name = "blue"
    vni = 100

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

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapping.model import LeasePolicy, Network, Service, parse_target

_POLICY_FIELDS = {"min_pool", "max_pool", "lease_ttl_s", "idle_release_s", "max_pools_per_consumer"}


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    networks: list[Network]
    services: list[Service]


def parse_cluster_config(data: dict[str, Any], source: str = "cluster config") -> ClusterConfig:
    try:
        networks = [Network(name=str(n["name"]), vni=int(n["vni"])) for n in data.get("networks", [])]
        names = {n.name for n in networks}
        services = []
        for s in data.get("services", []):
            unknown = set(s) - _POLICY_FIELDS - {"name", "network", "target"}
            if unknown:
                raise ValueError(f"service {s.get('name')!r} has unknown field(s) {sorted(unknown)}")
            if s["network"] not in names:
                raise ValueError(f"service {s['name']!r} names network {s['network']!r}, which is not defined")
            vip, port = parse_target(str(s["target"]))
            policy = LeasePolicy(**{k: v for k, v in s.items() if k in _POLICY_FIELDS})
            services.append(Service(name=str(s["name"]), network=str(s["network"]), vip=vip, port=port,
                                    policy=policy))
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
        lines += ["[[networks]]", f'name = "{n.name}"', f"vni = {n.vni}", ""]
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
