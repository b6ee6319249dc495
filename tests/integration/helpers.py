"""Building blocks for integration tests: configs, a cluster topology, and gRPC calls as a
consumer VM or an inspection client would make them (over mutual TLS, as the operator unless told)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from leasenet.cluster import OPERATOR, ConsumerVm, LocalCluster, Proc, consumer_toml, write_toml
from leasenet.inspection import all_pages
from leasenet.procstat import Memory, memory
from mapping.config import ClusterConfig, to_toml
from mapping.model import LeasePolicy, Network, Service, parse_target
from tests.conftest import tls_as
from wire import rpc
from wire.tls import Identity, Kind
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

TARGET = "10.1.255.1:7"


def cluster_toml(*, min_pool: int = 1, max_pool: int = 2, ttl: int = 5, idle: float = 30.0) -> str:
    """Networks blue and red; service echo (in blue, policy as given) and red-echo (in red)."""
    policy = LeasePolicy(min_pool=min_pool, max_pool=max_pool, lease_ttl_s=ttl, idle_release_s=idle)
    return to_toml(ClusterConfig(
        networks=[Network("blue", 100), Network("red", 200)],
        services=[Service("echo", "blue", *parse_target(TARGET), policy),
                  Service("red-echo", "red", *parse_target("10.2.255.1:7"))]))


def attached(addresses: list[str], network: str = "blue") -> list[ConsumerVm]:
    return [ConsumerVm(network, a, f"tok-{a}") for a in addresses]


@dataclass
class Topology:
    cluster: LocalCluster
    registry: Proc
    producers: list[Proc]
    consumers: list[Proc]


def start(cluster: LocalCluster, *, producers: int = 1, vms: int = 2, handler: str = "echo",
          consumers: list[list[str]] | None = None, handler_options: tuple[str, ...] = (),
          **policy: float) -> Topology:
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml(**policy))  # type: ignore[arg-type]
    registry = cluster.registry("registry1", config)
    prods = [cluster.producer(f"p{i}", network="blue", service="echo", vms=vms, vm_address_start=f"10.1.{i}.1",
                              handler=handler, extra=tuple(x for o in handler_options for x in ("--handler-option", o)))
             for i in range(1, producers + 1)]
    # a consumer host's liveness TTL is its pools': at most the service's lease_ttl_s
    ttl = ("--liveness-ttl", str(min(3, int(policy["ttl"])))) if "ttl" in policy else ()
    cons = [cluster.consumer(f"c{i}", config=write_toml(cluster.workdir / f"c{i}.toml", consumer_toml(attached(addrs))),
                             registries=[registry.address], extra=ttl)
            for i, addrs in enumerate(consumers or [["10.1.0.1"]], start=1)]
    return Topology(cluster, registry, prods, cons)


def dial(address: str, expect: Kind, identity: Identity = OPERATOR) -> grpc.aio.Channel:
    """A channel to a test cluster's server of kind `expect`, presenting `identity`'s certificate."""
    return rpc.channel(address, tls_as(identity), expect)


async def send(consumer: str, src: str, payload: bytes = b"ping", *, target: str = TARGET, network: str = "blue",
               token: str | None = None, timeout: float = 5.0, request_id: int = 0,
               idempotent: bool = False) -> cpb.SendResponse:
    async with dial(consumer, Kind.CONSUMER) as channel:
        return await cpb_grpc.ConsumerHostStub(channel).Send(
            cpb.SendRequest(network=network, src=src, token=token if token is not None else f"tok-{src}",
                            target=target, payload=payload, request_id=request_id, idempotent=idempotent),
            timeout=timeout)


async def send_status(consumer: str, src: str, payload: bytes = b"ping", **kwargs: object) -> tuple[grpc.StatusCode, str]:
    try:
        await send(consumer, src, payload, **kwargs)  # type: ignore[arg-type]
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


async def leases(registry: str, **filters: str) -> list[rpb.Lease]:
    async with dial(registry, Kind.REGISTRY) as channel:
        return await all_pages(rpb_grpc.InspectionStub(channel).ListLeases, rpb.ListLeasesRequest(**filters), "leases")


async def vms(registry: str, **filters: str) -> list[rpb.ProducerVm]:
    async with dial(registry, Kind.REGISTRY) as channel:
        return await all_pages(rpb_grpc.InspectionStub(channel).ListVms, rpb.ListVmsRequest(**filters), "vms")


def history(cluster: LocalCluster) -> list[Path]:
    return sorted(Path(cluster.workdir).glob("*.history.jsonl"))


def memory_of(proc: Proc) -> Memory:
    """A running process's resident memory now and its peak so far (leasenet.procstat)."""
    assert proc.process is not None
    found = memory(proc.process.pid)
    assert found is not None, f"{proc.name} has no memory to read: it exited"
    return found
