"""Per-VM limits of command VMs: memory and CPU. A cgroup v2 of the VM's own where this host can
make one (memory.max, cpu.max); else RLIMIT_AS for memory and a nice value for CPU. The reason for
the choice is logged once, in one sentence.

The limits are set before the VM's program runs by exec'ing it through util-linux's `setpriv
--pdeathsig KILL` (the VM dies with its host), `prlimit --as` and `nice`, not by Python code
between fork and exec (a `preexec_fn`): a fork of a process that runs grpc calls gRPC's fork
handlers in the child, which abort it now and then ("Check failed: next_worker->state == KICKED").
Without those programs the host sets the limits on the new process from outside, a moment after
it started."""

from __future__ import annotations

import logging
import os
import resource
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


def own_cgroup_v2() -> Path | None:
    """This process's cgroup v2 directory, if the unified hierarchy is mounted and we may write in it."""
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    unified = [line.partition("::")[2] for line in lines if line.startswith("0::")]
    if not unified:
        return None
    path = CGROUP_ROOT / unified[0].lstrip("/")
    return path if os.access(path, os.W_OK) else None


class ProcessLimits:
    def __init__(self, memory_mb: int = 0, nice: int = 0, cpus: float = 0.0, group: str = "leasenet") -> None:
        self.memory_mb, self.nice, self.cpus = memory_mb, nice, cpus
        self.cgroup_parent: Path | None = None
        self._cgroups: dict[str, Path] = {}
        if memory_mb or cpus:
            self.cgroup_parent = self._make_parent(group)

    def _make_parent(self, group: str) -> Path | None:
        own = own_cgroup_v2()
        if own is None:
            log.info("no writable cgroup v2 here (this host has %s): VM memory is limited by RLIMIT_AS%s",
                     "cgroup v2, read-only to us" if (CGROUP_ROOT / "cgroup.controllers").exists() else "cgroup v1",
                     ", and --vm-cpus cannot be applied (only --vm-nice)" if self.cpus else "")
            return None
        parent = own / group
        try:
            try:  # a delegated cgroup may need it; one that holds processes refuses it (the parent's may be on)
                (own / "cgroup.subtree_control").write_text("+memory +cpu")
            except OSError:
                pass
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+memory +cpu")
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                raise OSError("the memory controller is not delegated to us")
        except OSError as exc:
            log.info("cannot make a cgroup v2 for the VMs under %s (%s): VM memory is limited by RLIMIT_AS", own, exc)
            return None
        log.info("VM limits through cgroup v2 under %s", parent)
        return parent

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` exec'd through the programs that set its limits first (those found on PATH)."""
        prefix: list[str] = []
        if setpriv := shutil.which("setpriv"):
            prefix += [setpriv, "--pdeathsig", "KILL", "--"]
        if self._rlimit_as and (prlimit := shutil.which("prlimit")):
            prefix += [prlimit, f"--as={self._rlimit_as}", "--"]
        if self.nice and (nice := shutil.which("nice")):
            prefix += [nice, "-n", str(self.nice), "--"]
        return prefix + argv

    @property
    def _rlimit_as(self) -> int:
        return self.memory_mb * 1024 * 1024 if self.memory_mb and self.cgroup_parent is None else 0

    def _from_outside(self, pid: int) -> None:
        """The limits `wrap` could not set (no prlimit or nice on PATH), set on the running process."""
        if self._rlimit_as and not shutil.which("prlimit"):
            resource.prlimit(pid, resource.RLIMIT_AS, (self._rlimit_as, self._rlimit_as))
        if self.nice and not shutil.which("nice"):
            os.setpriority(os.PRIO_PROCESS, pid, self.nice)

    def attach(self, pid: int, name: str) -> None:
        """Limits of the new VM process set from outside: a cgroup of its own (cgroup v2), or
        whatever `wrap` could not set."""
        if self.cgroup_parent is None:
            self._from_outside(pid)
            return
        group = self.cgroup_parent / name
        try:
            group.mkdir(exist_ok=True)
            if self.memory_mb:
                (group / "memory.max").write_text(str(self.memory_mb * 1024 * 1024))
            if self.cpus:
                (group / "cpu.max").write_text(f"{int(self.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            (group / "cgroup.procs").write_text(str(pid))
            self._cgroups[name] = group
        except OSError as exc:
            log.warning("VM process %d has no cgroup of its own (%s): its memory is limited by RLIMIT_AS", pid, exc)
            if self.memory_mb:
                size = self.memory_mb * 1024 * 1024
                resource.prlimit(pid, resource.RLIMIT_AS, (size, size))

    def detach(self, name: str) -> None:
        group = self._cgroups.pop(name, None)
        if group is not None:
            try:
                group.rmdir()
            except OSError:
                pass
