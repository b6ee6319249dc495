"""The host's supervised VMs (command or endpoint): a supervisor each, and the run dir that holds
their sockets and work dirs (under /tmp, so a socket path fits in sun_path)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from mapping.liveness import Liveness
from mapping.model import ProducerVm, VmId
from producer_host.actors import VmActor
from producer_host.handlers import Handler, HandlerError
from producer_host.vms.command import CommandDriver
from producer_host.vms.driver import EndpointDriver, VmDriver
from producer_host.vms.limits import ProcessLimits
from producer_host.vms.settings import DriverKind, VmSettings
from producer_host.vms.supervisor import VmSupervisor


def own_server_handler() -> Handler:
    """What `Send` meets on a VM that runs its own gRPC server: a sentence, not a call."""
    async def handle(payload: bytes) -> bytes:
        raise HandlerError("this producer VM runs its own gRPC server: call it through a VIP endpoint, not Send")
    return handle


class SupervisedVms:
    def __init__(self, vms: list[ProducerVm], actors: dict[VmId, VmActor], settings: VmSettings,
                 liveness: Liveness) -> None:
        self.settings = settings
        self.run_dir = Path(tempfile.mkdtemp(prefix="ln-", dir="/tmp"))
        drivers: list[VmDriver]
        if settings.kind is DriverKind.COMMAND:
            limits = ProcessLimits(settings.memory_mb, settings.nice, settings.cpus,
                                   group=f"leasenet-{self.run_dir.name}")
            drivers = [CommandDriver(vm, i, settings, self.run_dir, limits) for i, vm in enumerate(vms)]
        else:
            drivers = [EndpointDriver(endpoint) for endpoint in settings.endpoints]
        self.supervisors = [VmSupervisor(vm, driver, actors[vm.vm_id], liveness, settings)
                            for vm, driver in zip(vms, drivers, strict=True)]

    def registered(self) -> list[ProducerVm]:
        """The VM records a (re-)registration writes: the serving, unused VMs only."""
        return [record for s in self.supervisors if (record := s.registered()) is not None]

    def start(self, tasks: asyncio.TaskGroup) -> list[asyncio.Task[None]]:
        return [tasks.create_task(s.run(), name=f"supervisor of {s.vm.vm_id}") for s in self.supervisors]

    async def stop(self) -> None:
        """Withdraw and stop every VM at once (each within --vm-stop-grace)."""
        await asyncio.gather(*(s.stop() for s in self.supervisors))

    def close(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def states(self) -> dict[tuple[str, ...], float]:
        """leasenet_vms: supervised VMs by service and state."""
        return dict(Counter((s.vm.service, s.state.value) for s in self.supervisors))
