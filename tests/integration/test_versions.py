"""Version skew (issue 20 item 3), with real processes: release N and N+1 side by side serve traffic
in every direction (consumer host -> producer host, consumer host -> registry, registry ->
registry); a pair with no protocol version in common is refused with a sentence naming both
versions, and nothing crashes or runs; a process of another etcd key schema does not start.

N is this tree's build; N+1 and the incompatible N+2 are the same tree announcing other versions
(the hidden --announce-version flag, wire/version.py)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from leasenet.cluster import ConsumerVm, LocalCluster, consumer_toml, write_toml
from leasenet.cluster import OPERATOR
from leasenet.inspection import all_pages
from tests.conftest import tls_as
from tests.integration.helpers import cluster_toml, dial, send_status
from wire import channels, version
from wire.tls import Kind
from wire.v1 import registry_pb2 as rpb
from wire.v1 import registry_pb2_grpc as rpb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N = version.build()


def bumped(release: str, by: int, keep_oldest: bool) -> str:
    """An announcement `by` protocol versions past N's, still speaking N's newest when `keep_oldest`."""
    def span(v: version.Versions) -> str:
        return f"{v.newest if keep_oldest else v.newest + by}-{v.newest + by}"
    return f"{release} tunnel={span(N.tunnel)} leasing={span(N.leasing)}"


N1 = bumped(N.release + ".next", 1, keep_oldest=True)  # the next release: compatible
N2 = bumped(N.release + ".far", 2, keep_oldest=False)  # two on, N's versions dropped: incompatible
VS = ("--announce-version", N1)
BLUE, RED = "10.1.255.1:7", "10.2.255.1:7"  # echo (network blue), red-echo (network red)


def logs(cluster: LocalCluster, *names: str) -> str:
    return "\n".join(cluster.procs[n].log.read_text(errors="replace") for n in names)


async def hosts(registry: str) -> dict[str, str]:
    async with dial(registry, Kind.REGISTRY) as channel:
        listed = await all_pages(rpb_grpc.InspectionStub(channel).ListHosts, rpb.ListHostsRequest(), "hosts")
    return {h.host_id: h.version for h in listed}


async def test_release_n_and_n_plus_1_serve_traffic_side_by_side(cluster: LocalCluster) -> None:
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml(min_pool=1, max_pool=1))
    r1 = cluster.registry("r1", config)
    r2 = cluster.registry("r2", config, extra=VS)
    # p1 (N) serves echo in blue, p2 (N+1) red-echo in red: each consumer host reaches both
    cluster.producer("p1", network="blue", service="echo", vms=2, vm_address_start="10.1.1.1")
    cluster.producer("p2", network="red", service="red-echo", vms=2, vm_address_start="10.2.1.1", extra=VS)
    # each consumer host knows only the registry of the other release: a grant for a service the
    # other registry owns is forwarded between N and N+1
    for name, last, registry, extra in (("c1", 1, r2, ()), ("c2", 2, r1, VS)):
        vms = [ConsumerVm("blue", f"10.1.0.{last}", f"tok-{last}"), ConsumerVm("red", f"10.2.0.{last}", f"tok-{last}")]
        cluster.consumer(name, config=write_toml(cluster.workdir / f"{name}.toml", consumer_toml(vms)),
                         registries=[registry.address], extra=extra)

    for consumer, last in (("c1", 1), ("c2", 2)):
        for network, subnet, target in (("blue", 1, BLUE), ("red", 2, RED)):
            for i in range(3):
                code, details = await send_status(cluster.procs[consumer].address, f"10.{subnet}.0.{last}",
                                                  f"{consumer}-{i}".encode(), network=network, target=target,
                                                  token=f"tok-{last}")
                assert code == grpc.StatusCode.OK, (consumer, network, details)

    announced = await hosts(r1.address)
    assert announced == {"r1": str(N), "p1": str(N), "c1": str(N), "r2": N1 + f" keys={version.KEY_SCHEMA}", "p2": N1 + f" keys={version.KEY_SCHEMA}",
                         "c2": N1 + f" keys={version.KEY_SCHEMA}"}
    health = await channels.probe_health(cluster.procs["p2"].address, 5.0, tls_as(OPERATOR), [Kind.PRODUCER])
    assert health.serving and health.version == N1 + f" keys={version.KEY_SCHEMA}"
    table = subprocess.run([sys.executable, "-m", "leasenet", "hosts", "--registry", r2.address, "--tls-dir",
                            str(cluster.tls_dir)], capture_output=True, text=True, timeout=60,
                           env=cluster.process_env())
    assert table.returncode == 0, table.stderr
    assert "VERSION" in table.stdout.splitlines()[0]
    assert any(line.split()[0] == "p2" and line.endswith(N1 + f" keys={version.KEY_SCHEMA}") for line in table.stdout.splitlines())
    assert "version in common" not in logs(cluster, "r1", "r2", "p1", "p2", "c1", "c2")


async def test_an_incompatible_pair_is_refused_with_both_versions_named(cluster: LocalCluster) -> None:
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml())
    registry = cluster.registry("r1", config)
    cluster.producer("p1", network="blue", service="echo", vms=2, vm_address_start="10.1.1.1")

    # leasing: a consumer host of N+2 asks a registry of N for a lease
    far = cluster.consumer("c3", config=write_toml(cluster.workdir / "c3.toml", consumer_toml(
        [ConsumerVm("blue", "10.1.0.3", "tok-3")])), registries=[registry.address], extra=("--announce-version", N2))
    code, details = await send_status(far.address, "10.1.0.3", token="tok-3")
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    leasing = (f"consumer/c3 (leasenet {N.release}.far, leasing protocol {N.leasing.newest + 2}) and the registry "
               f"(leasenet {N.release}, leasing protocol {N.leasing}) have no leasing protocol version in common")
    assert leasing in logs(cluster, "c3")

    # tunnel: a consumer host that shares the leasing protocol but not the tunnel's gets a lease on
    # p1; p1 refuses its tunnel before reading a frame, and nothing of it runs
    tunnel_only = f"{N.release}.far tunnel={N.tunnel.newest + 2}"
    odd = cluster.consumer("c4", config=write_toml(cluster.workdir / "c4.toml", consumer_toml(
        [ConsumerVm("blue", "10.1.0.4", "tok-4")])), registries=[registry.address],
        extra=("--announce-version", tunnel_only))
    code, details = await send_status(odd.address, "10.1.0.4", token="tok-4", idempotent=False)
    assert code != grpc.StatusCode.OK
    assert "delivery unknown" not in details  # refused before delivery: not a maybe
    tunnel = (f"consumer host c4 (leasenet {N.release}.far, tunnel protocol {N.tunnel.newest + 2}) and producer host "
              f"p1 (leasenet {N.release}, tunnel protocol {N.tunnel}) have no tunnel protocol version in common")
    assert tunnel in logs(cluster, "p1") and tunnel in logs(cluster, "c4")
    assert "10.1.0.4" not in (cluster.workdir / "p1.history.jsonl").read_text()

    # the refused stay up and keep serving the compatible
    assert all(cluster.procs[n].alive for n in ("r1", "p1", "c3", "c4"))
    assert "Traceback" not in logs(cluster, "r1", "p1", "c3", "c4")
    near = cluster.consumer("c5", config=write_toml(cluster.workdir / "c5.toml", consumer_toml(
        [ConsumerVm("blue", "10.1.0.5", "tok-5")])), registries=[registry.address], extra=VS)
    assert (await send_status(near.address, "10.1.0.5", token="tok-5"))[0] == grpc.StatusCode.OK


def test_a_process_of_another_key_schema_does_not_start(cluster: LocalCluster) -> None:
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml())
    cluster.registry("r1", config)  # marks etcd with this tree's key schema
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        cluster.producer("p9", network="blue", service="echo", vms=1, vm_address_start="10.1.9.1",
                         extra=("--announce-version", f"{N.release}.schema keys={N.keys + 1}"))
    proc = cluster.procs["p9"]
    assert proc.process is not None and proc.process.wait(10) == 1
    last = proc.log.read_text().strip().splitlines()[-1]
    assert last == (f"leasenet: FAILED_PRECONDITION: etcd holds key schema {N.keys} (written by leasenet {N.release}) and this process "
                    f"(leasenet {N.release}.schema) reads key schema {N.keys + 1} only: it would misread the "
                    "records; refused")
    assert "Traceback" not in proc.log.read_text()
