"""Fleet-sized registration (SPEC §9): etcd takes at most 128 operations per transaction, so a
producer host with more VMs than that registers them in chunks under its one liveness lease."""

from __future__ import annotations

import pytest

from tests.conftest import eventually_async
from tests.integration.helpers import send, start, vms

pytestmark = pytest.mark.integration


async def test_a_producer_host_with_a_thousand_vms_registers_in_chunks_and_serves(cluster):
    topo = start(cluster, vms=1000)

    async def all_registered() -> bool:
        return len(await vms(topo.registry.address, host_id="p1")) == 1000

    await eventually_async(all_registered, timeout_s=20, what="1,000 VMs of p1 in the registry's replica")
    resp = await send(topo.consumers[0].address, "10.1.0.1", b"many")
    assert resp.payload == b"many"
    assert "in 8 transaction(s)" in (cluster.workdir / "p1.log").read_text()
