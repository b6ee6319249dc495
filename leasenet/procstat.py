"""A process's resident memory as the kernel reports it (Linux /proc/<pid>/status), and its child
processes (their parent in /proc/<pid>/stat): the one reader for the bench and the tests. Only tools use
it, so it lives here and not in a process's package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Memory:
    rss_kib: int  # resident now (VmRSS)
    peak_kib: int  # the most it was resident so far (VmHWM)

    @property
    def rss_mib(self) -> float:
        return round(self.rss_kib / 1024, 1)


def memory(pid: int) -> Memory | None:
    """Process `pid`'s resident memory now and at its peak; None when the process is gone or there
    is no Linux /proc to read."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_status(text)


def parse_status(text: str) -> Memory | None:
    """VmRSS and VmHWM of a /proc/<pid>/status text; None when either is missing (a zombie has
    neither) or not a number of kB."""
    fields = dict(line.split(":", 1) for line in text.splitlines() if line.startswith(("VmRSS:", "VmHWM:")))
    try:
        return Memory(rss_kib=_kib(fields["VmRSS"]), peak_kib=_kib(fields["VmHWM"]))
    except (KeyError, ValueError):
        return None


def _kib(value: str) -> int:
    number, unit = value.split()
    if unit != "kB":
        raise ValueError(f"{value!r} is not in kB")
    return int(number)


def rss_mib(pid: int) -> float | None:
    """Resident memory now in MiB, one decimal (the bench's figure); None as for memory()."""
    found = memory(pid)
    return None if found is None else found.rss_mib


def children(pid: int) -> list[int]:
    """The pids of process `pid`'s children now (e.g. a producer host's command VMs), from each
    process's parent in /proc/<pid>/stat; [] when it has none or there is no Linux /proc to read."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])  # after the name: state, ppid
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if parent == pid:
            found.append(int(stat.parent.name))
    return sorted(found)
