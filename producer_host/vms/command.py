"""The command driver: each producer VM a process the host spawns from `--vm-command`.

Each incarnation gets its own process group (`start_new_session`: a stop reaches whatever the VM
started), its own fresh empty work dir, a private endpoint (a unix socket under the host's run dir,
or a free loopback port), and the host's limits: the address space (RLIMIT_AS) and a nice value,
set before its program runs, or a cgroup v2 where this host can make one (limits.py). Its stdout
and stderr lines go to the host's log with the VM's id. It is started with a parent-death signal
(PR_SET_PDEATHSIG): a VM does not outlive the host that registered it, even one SIGKILLed.

It is spawned by subprocess.Popen (vfork then exec: nothing runs in the child before exec) and not by
the event loop's subprocess support: uvloop's libuv spawns with fork(), which runs gRPC's fork
handlers in the child, and those abort it now and then. Its exit is awaited on a pidfd."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from mapping.model import ProducerVm
from producer_host.vms.limits import ProcessLimits
from producer_host.vms.settings import VmSettings, endpoint_of, expand, uses_socket

log = logging.getLogger(__name__)

LOG_LINE_MAX = 2000  # characters of one VM output line kept in the host's log


def free_port() -> int:
    """A loopback port nothing listens on now (the VM binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CommandDriver:
    restartable = True

    def __init__(self, vm: ProducerVm, index: int, settings: VmSettings, run_dir: Path,
                 limits: ProcessLimits) -> None:
        self.vm = vm
        self.settings = settings
        self.limits = limits
        self.run_dir = run_dir
        self.name = f"vm{index}"  # short: the socket path must fit in sun_path
        self.incarnation = 0
        self.workdir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._exit: asyncio.Future[int] | None = None
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> str:
        self.incarnation += 1
        workdir = self.run_dir / f"{self.name}.{self.incarnation}"
        await asyncio.to_thread(self._fresh_dir, workdir)
        self.workdir = workdir
        values = {"vm_id": self.vm.vm_id, "address": self.vm.address, "workdir": str(workdir),
                  "python": sys.executable, "socket": "", "port": ""}
        if uses_socket(self.settings.command):
            path = self.run_dir / f"{self.name}.sock"
            path.unlink(missing_ok=True)  # the previous incarnation's
            values["socket"] = str(path)
            endpoint = endpoint_of(socket=str(path))
        if "{port}" in self.settings.command:
            port = free_port()
            values["port"] = str(port)
            if not uses_socket(self.settings.command):
                endpoint = endpoint_of(port=port)
        argv = self.limits.wrap(expand(self.settings.command, values))
        self.process = process = subprocess.Popen(
            argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, env=self._env())
        self.limits.attach(process.pid, self.name)
        self._exit = self._watch_exit(process)
        self._pumps = [asyncio.get_running_loop().create_task(self._pump(pipe, what))
                       for pipe, what in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
        log.info("VM %s: started pid %d in %s (%s)", self.vm.vm_id, self.process.pid, workdir, endpoint)
        return endpoint

    def _env(self) -> dict[str, str]:
        """The host's environment minus leasenet's own settings (its TLS paths, etcd endpoints and
        tokens are the host's, not the VM's)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("LEASENET_")} | {"PYTHONUNBUFFERED": "1"}

    def _fresh_dir(self, workdir: Path) -> None:
        if self.workdir is not None and self.workdir != workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)  # the previous lessee's files go
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(mode=0o700, parents=True)

    @staticmethod
    def _watch_exit(process: subprocess.Popen[bytes]) -> asyncio.Future[int]:
        """A future of the process's exit status, set when its pidfd becomes readable (it exited)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        pidfd = os.pidfd_open(process.pid)

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not done.done():
                done.set_result(process.wait())
        loop.add_reader(pidfd, reap)
        return done

    async def exited(self) -> int:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after --vm-stop-grace; then SIGKILL to whatever is left of
        the group (a child that outlived the VM's main process)."""
        process, exit_status = self.process, self._exit
        if process is None or exit_status is None:
            return
        if not exit_status.done():
            self._signal(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.settings.stop_grace_s):
                    await asyncio.shield(exit_status)
            except TimeoutError:
                log.warning("VM %s: pid %d did not stop within %.1f s of SIGTERM; killing it", self.vm.vm_id,
                            process.pid, self.settings.stop_grace_s)
        self._signal(process.pid, signal.SIGKILL)  # the group: whatever the VM started goes too
        await asyncio.shield(exit_status)
        for pump in self._pumps:  # the pipes close with the last process holding them
            try:
                async with asyncio.timeout(1.0):
                    await pump
            except TimeoutError:
                pump.cancel()
        self.limits.detach(self.name)

    def close(self) -> None:
        """The work dir of the last incarnation (at host shutdown, after stop)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _signal(group: int, sig: signal.Signals) -> None:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def _pump(self, pipe: IO[bytes] | None, what: str) -> None:
        if pipe is None:
            return
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=64 * 1024)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), pipe)
        try:
            await self._log_lines(stream, what)
        finally:
            transport.close()

    async def _log_lines(self, stream: asyncio.StreamReader, what: str) -> None:
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line beyond the reader's limit: take what there is
                line = await stream.read(64 * 1024)
            if not line:
                return
            text = line.decode(errors="replace").rstrip("\n")
            log.info("VM %s %s: %s", self.vm.vm_id, what, text[:LOG_LINE_MAX])
