"""The harness's own processes: `python -m leasenet.bench SERVER LISTEN READY_FILE [ARG]` (a server
of bench.servers) or `python -m leasenet.bench ROLE TASK.json RESULT.json` (a measuring role)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from leasenet.bench.calls import CallsTask, calls
from leasenet.bench.datapath import load
from leasenet.bench.failover import failover
from leasenet.bench.leasing import grants, race
from leasenet.bench.plans import FailoverTask, GrantsTask, LoadTask, RaceTask, decode
from leasenet.bench.scaleroles import SCALE_ROLES
from leasenet.bench.servers import SERVERS
from leasenet.bench.vmlife import VmLifeTask, vm_lifecycle
from wire.rpc import install_event_loop

# role name -> (its task type, the coroutine that runs it)
ROLES: dict[str, tuple[type[Any], Callable[[Any], Awaitable[Any]]]] = {
    LoadTask.role: (LoadTask, load), GrantsTask.role: (GrantsTask, grants), RaceTask.role: (RaceTask, race),
    FailoverTask.role: (FailoverTask, failover), CallsTask.role: (CallsTask, calls),
    VmLifeTask.role: (VmLifeTask, vm_lifecycle), **SCALE_ROLES}


def main(argv: list[str]) -> int:
    loop_name = install_event_loop()  # the same event loop as the hosts: a like-for-like baseline
    if argv[0] in SERVERS:
        asyncio.run(SERVERS[argv[0]](*argv[1:]))
        return 0
    task_type, role = ROLES[argv[0]]
    task = decode(task_type, json.loads(Path(argv[1]).read_text()))
    result = replace(asyncio.run(role(task)), event_loop=loop_name)
    tmp = Path(argv[2]).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
