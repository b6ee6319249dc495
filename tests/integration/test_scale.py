"""Deployment shapes beyond the small test cluster: fleet-sized registration (SPEC §9: etcd takes at
most 128 operations per transaction, so a producer host with more VMs registers them in chunks
under its one liveness lease), and hosts that advertise another address than they listen on."""

from __future__ import annotations

import pytest

from leasenet.cluster import consumer_toml, write_toml
from leasenet.etcd import free_ports
from tests.conftest import eventually_async
from tests.integration.helpers import attached, cluster_toml, leases, send, start, vms

pytestmark = pytest.mark.integration


async def test_a_producer_host_with_a_thousand_vms_registers_in_chunks_and_serves(cluster):
    topo = start(cluster, vms=1000)

    async def all_registered() -> bool:
        return len(await vms(topo.registry.address, host_id="p1")) == 1000

    await eventually_async(all_registered, timeout_s=20, what="1,000 VMs of p1 in the registry's replica")
    resp = await send(topo.consumers[0].address, "10.1.0.1", b"many")
    assert resp.payload == b"many"
    assert "in 8 transaction(s)" in (cluster.workdir / "p1.log").read_text()


async def test_hosts_given_an_advertised_address_still_listen_and_are_reached_there(cluster):
    # the docker deployment advertises service names; a start-up that skipped listening when
    # --advertise was given went unnoticed outside docker
    config = write_toml(cluster.workdir / "cluster.toml", cluster_toml())
    registry = cluster.registry("registry1", config)
    p_port, c_port = free_ports("127.0.0.1", 2)
    cluster.producer("p1", network="blue", service="echo", vms=2, vm_address_start="10.1.1.1",
                     listen=f"127.0.0.1:{p_port}", extra=("--advertise", f"localhost:{p_port}"))
    consumer = cluster.consumer("c1", config=write_toml(cluster.workdir / "c1.toml", consumer_toml(attached(["10.1.0.1"]))),
                                registries=[registry.address], listen=f"127.0.0.1:{c_port}",
                                extra=("--advertise", f"localhost:{c_port}"))
    assert consumer.address == f"localhost:{c_port}"
    resp = await send(f"127.0.0.1:{c_port}", "10.1.0.1", b"advertised")
    assert resp.payload == b"advertised"
    [lease] = await leases(registry.address)
    assert {m.host_address for m in lease.members} == {f"localhost:{p_port}"}
