"""Start the notebook server (examples/notebook) as a real process, for tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVING = "notebook serving on "


@dataclass(frozen=True)
class Notebook:
    address: str  # what a client dials: unix:///path.sock or 127.0.0.1:PORT
    process: asyncio.subprocess.Process


@contextlib.asynccontextmanager
async def notebook_server(listen: str, vm_id: str, workdir: Path, history: Path | None = None,
                          timeout_s: float = 30) -> AsyncIterator[Notebook]:
    """The server, once it has printed its address; SIGTERMed (and awaited) on the way out."""
    args = [sys.executable, "-m", "examples.notebook.server", "--listen", listen, "--vm-id", vm_id,
            "--workdir", str(workdir), *(["--history", str(history)] if history else [])]
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, cwd=REPO,
                                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout_s)).decode()
        assert line.startswith(SERVING), f"the notebook did not start: {line!r}"
        yield Notebook(line[len(SERVING):].strip(), process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                process.kill()
                await process.wait()
