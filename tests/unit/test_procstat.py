"""leasenet.procstat, the one reader of a process's memory: VmRSS and VmHWM from /proc/<pid>/status."""

from __future__ import annotations

import os
import subprocess
import sys

from leasenet.procstat import Memory, children, memory, parse_status, rss_mib

STATUS = "Name:\tpython3\nVmPeak:\t  300000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t4\n"


def test_a_status_text_gives_resident_memory_now_and_at_its_peak() -> None:
    assert parse_status(STATUS) == Memory(rss_kib=20480, peak_kib=40960)
    assert Memory(rss_kib=20480, peak_kib=40960).rss_mib == 20.0


def test_a_status_without_both_figures_or_with_a_strange_one_reads_as_none() -> None:
    zombie = "Name:\tpython3\nState:\tZ (zombie)\n"
    assert parse_status(zombie) is None
    assert parse_status(STATUS.replace("VmHWM:\t   40960 kB\n", "")) is None
    assert parse_status(STATUS.replace("20480 kB", "lots")) is None


def test_this_process_has_memory_and_a_reaped_one_has_none() -> None:
    mine = memory(os.getpid())
    assert mine is not None and 0 < mine.rss_kib <= mine.peak_kib
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its /proc entry is gone
    assert memory(gone.pid) is None and rss_mib(gone.pid) is None


def test_a_process_lists_its_children_and_a_gone_one_none() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in children(os.getpid())
    finally:
        child.communicate(b"")
    assert child.pid not in children(os.getpid())
    assert children(child.pid) == []
