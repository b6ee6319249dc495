"""A tiny producer VM program for the VM driver tests: a grpc.aio server with the standard health
service on --listen (unix:///path or 127.0.0.1:PORT), which says what it is and what it found.

On start it appends one JSON line to <--report>/<vm id with / as _>.jsonl: its pid, its work dir,
the files the work dir held before it wrote any, and its soft RLIMIT_AS; then it writes
`state.txt` into the work dir (the state a reset must wipe), prints one line to stdout and one to
stderr, and serves. --never-healthy: health answers NOT_SERVING forever."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
from pathlib import Path

import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--vm-id", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--never-healthy", action="store_true")
    args = p.parse_args()
    workdir = Path(args.workdir)
    found = sorted(os.listdir(workdir))
    report = Path(args.report) / (args.vm_id.replace("/", "_") + ".jsonl")
    with open(report, "a") as out:
        out.write(json.dumps({"pid": os.getpid(), "workdir": str(workdir), "files_at_start": found,
                              "cwd": os.getcwd(), "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
                              "listen": args.listen}) + "\n")
    (workdir / "state.txt").write_text(f"written by pid {os.getpid()}\n")
    print(f"lifevm {args.vm_id} says hello on stdout", flush=True)
    print(f"lifevm {args.vm_id} says hello on stderr", file=sys.stderr, flush=True)

    server = grpc.aio.server()
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(args.listen)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING if args.never_healthy
                      else health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(main())
