"""Command VMs and VIP endpoints in the docker deployment: the producer containers notebook1 and
notebook2 run every VM of the `notebook` service as a real process (the notebook gRPC server of
examples/notebook, `--vm-command`), and the `calls` job, on no network at all, plays consumer3's
two consumer VMs with the unmodified notebook client through their VIP endpoints (unix sockets
in the `vip` volume, examples/notebook/workload.py).

While the calls run, one VM process serving a consumer VM is SIGKILLed inside its producer
container (`docker exec ... os.kill(PID, 9)`, the PID its Whoami answered). Then:

- every call got an outcome; a Get after a successful Put returned the value put (the lessee's
  state lives in its one VM) except across the kill, where it may be gone (`lost`), never another
  value (`wrong`);
- the calls in flight at the kill ended OK or UNAVAILABLE "delivery unknown" (SPEC §6), the
  idempotent ones OK (run again on another VM) unless part of their answer had already come (a
  Scan cut midway: its history line's `received`; running it again would show that part twice),
  and once the killed VM's lessee was served again, all its later calls succeeded;
- the killed VM came back as a new process with the same VM id and registered again;
- from the VMs' own history (one line per call they ran, written by the VM process): no two
  calls overlapped on one VM (leasenet/checker.py's check), every call carried a claim, and a VM's
  claims never interleave (once a VM serves a newer claim, an older one never runs on it again).

The figures are printed in the terminal summary ("docker deployment figures")."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from leasenet import checker
from tests.conftest import eventually
from tests.docker.conftest import FIGURES, ComposeProject
from tests.docker.test_deployment import inspect

pytestmark = pytest.mark.docker

SERVERS = ("etcd1", "etcd2", "etcd3", "registry1", "registry2", "notebook1", "notebook2", "consumer3")
NOTEBOOK_HOSTS = ("notebook1", "notebook2")
VMS_PER_HOST = 2  # --vms in compose.yaml
CONSUMER_VMS = ("10.1.0.5", "10.1.0.6")  # the calls job's --vip names
ROUNDS = 120  # per consumer VM, paced 0.1 s apart: ~25-40 s here, room for the kill and the recovery
KILL_AT = 0.25  # share of the rounds done before the kill
STREAM_EVERY = 4  # examples/notebook/workload.py: Sleep, Scan, Append, Chat every 4th round
IN_FLIGHT_CODES = {"OK", "UNAVAILABLE"}  # a call the kill cut: retried elsewhere, or "delivery unknown"
# the workload marks them `leasenet-idempotent: 1`: run again if cut before any of their answer came
IDEMPOTENT_METHODS = {"Whoami", "Get", "Scan"}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_calls(rounds: int, puts_ok: int) -> int:
    """Calls one consumer VM makes: Whoami and Put each round, Get after each Put that succeeded,
    Sleep, Scan, Append and Chat every STREAM_EVERY-th round."""
    return 2 * rounds + puts_ok + 4 * len(range(0, rounds, STREAM_EVERY))


def calls_done(project: ComposeProject) -> int:
    proc = project.exec("calls", "grep", "-c", '"event": "call"', "/history/calls.jsonl", check=False)
    return int(proc.stdout.strip() or 0)


def last_whoami(project: ComposeProject, vm: str) -> dict[str, Any]:
    """The last successful Whoami of a consumer VM: which VM process serves it now."""
    lines = project.exec("calls", "grep", f'"vm": "{vm}", "round": [0-9]*, "method": "Whoami"',
                         "/history/calls.jsonl").stdout.splitlines()
    return [w for w in map(json.loads, lines) if w["code"] == "OK"][-1]


def vm_processes(project: ComposeProject, host: str) -> dict[str, int]:
    """VM id -> pid of the notebook servers running in a producer container (from /proc)."""
    script = ("import os, json\n"
              "found = {}\n"
              "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
              "    try: argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
              "    except OSError: continue\n"
              "    if b'examples.notebook.server' in argv and b'--vm-id' in argv:\n"
              "        found[argv[argv.index(b'--vm-id') + 1].decode()] = int(pid)\n"
              "print(json.dumps(found))")
    return json.loads(project.exec(host, "python3", "-c", script).stdout)


def kill(project: ComposeProject, host: str, pid: int) -> int:
    """SIGKILL a process inside a producer container; the time.monotonic_ns() of the kill, read in
    there right before it (`docker exec` takes a while to start: a time taken here would be early;
    the containers share this machine's monotonic clock)."""
    return int(project.exec(host, "python3", "-c", "import os, time\n"
                            f"at = time.monotonic_ns(); os.kill({pid}, 9); print(at)").stdout)


def notebook_vms(port: int) -> set[str]:
    return {v["vm_id"] for v in inspect("vms", port, "--service", "notebook")}


def claims_back(executions: list[checker.Execution]) -> list[str]:
    """A call run on a VM under an older claim than one already seen there: claims (fencing tokens,
    which only grow) follow each other on a VM, one lessee at a time, never back to an earlier one."""
    found = []
    by_vm: dict[str, list[checker.Execution]] = defaultdict(list)
    for e in executions:
        by_vm[e.vm].append(e)
    for vm, runs in by_vm.items():
        newest = 0
        for e in sorted(runs, key=lambda e: e.start_ns):
            if e.token < newest:
                found.append(f"{vm} ran a call of claim {e.token} at {e.start_ns} after claim {newest} had begun")
            newest = max(newest, e.token)
    return found


def test_command_vms_serve_unmodified_clients_through_vip_endpoints(compose_project, leasenet_image, tmp_path):
    timings: dict[str, float] = {}
    project = compose_project("lnv", env={"LEASENET_CALLS_ROUNDS": str(ROUNDS)})
    started = time.monotonic()
    try:
        project.up(*SERVERS, timeout=240)
        timings["up + healthy"] = time.monotonic() - started
        # The VMs register once their own servers answer grpc.health.v1 (the hosts are healthy before).
        registered = eventually(lambda: len(vms := notebook_vms(project.registry_port))
                                == len(NOTEBOOK_HOSTS) * VMS_PER_HOST and vms, 120, 0.5, "every notebook VM registered")
        timings["VMs registered"] = time.monotonic() - started
        processes = {host: vm_processes(project, host) for host in NOTEBOOK_HOSTS}
        assert {vm for p in processes.values() for vm in p} == registered, (processes, registered)

        project.up("calls", wait=False)
        t0 = time.monotonic()
        eventually(lambda: calls_done(project) >= KILL_AT * len(CONSUMER_VMS) * expected_calls(ROUNDS, ROUNDS)
                   or project.state("calls")["Status"] != "running", 240, 0.5, f"{KILL_AT:.0%} of the calls done")
        assert project.state("calls")["Status"] == "running", f"calls ended before the kill:\n{project.logs('calls')}"

        # The VM serving 10.1.0.5 now, by its own answer; killed inside its producer container.
        victim = last_whoami(project, CONSUMER_VMS[0])
        host = next(h for h, p in processes.items() if victim["served_by"] in p)
        assert processes[host][victim["served_by"]] == victim["pid"], (victim, processes)
        kill_ns = kill(project, host, victim["pid"])
        # A new process for the same VM id, registered again.
        new_pid = eventually(lambda: (pid := vm_processes(project, host).get(victim["served_by"]))
                             not in (None, victim["pid"]) and pid, 120, 0.5, "the killed VM's process replaced")
        eventually(lambda: victim["served_by"] in notebook_vms(project.registry_port), 120, 0.5,
                   "the killed VM registered again")
        timings["kill to registered again"] = (time.monotonic_ns() - kill_ns) / 1e9

        code = project.wait_exit("calls", timeout=600)
        timings["calls"] = time.monotonic() - t0
        summary = project.logs("calls", tail=5).strip().splitlines()[-1]
        assert code == 0, f"calls exited {code}:\n{project.logs('calls')}"
        project.copy_from("calls", "/history", tmp_path / "history")
    except BaseException:
        project.print_logs(*SERVERS, "calls")
        raise

    history_dir = tmp_path / "history"
    calls = [c for c in read_jsonl(history_dir / "calls.jsonl") if c["event"] == "call"]
    vm_history = [line for host in NOTEBOOK_HOSTS for line in read_jsonl(history_dir / f"{host}-vms.jsonl")]

    # Every call got its outcome, and the lessee's state was its own.
    by_vm = {vm: [c for c in calls if c["vm"] == vm] for vm in CONSUMER_VMS}
    puts_ok = {vm: sum(c["method"] == "Put" and c["code"] == "OK" for c in cs) for vm, cs in by_vm.items()}
    assert {vm: len(cs) for vm, cs in by_vm.items()} == {vm: expected_calls(ROUNDS, puts_ok[vm]) for vm in CONSUMER_VMS}
    states = Counter(c["state"] for c in calls if c["method"] == "Get" and c["code"] == "OK")
    assert states["wrong"] == 0, "a Get answered another value than the lessee's own"
    assert all(any(c.get("state") == "kept" for c in cs) for cs in by_vm.values()), "a lessee never kept its state"
    rounds = {(c["vm"], c["round"], c["method"]): c for c in calls}
    lost = [c for c in calls if c.get("state") == "lost"]
    across_kill = [c for c in lost if rounds[(c["vm"], c["round"], "Put")]["start_ns"] <= kill_ns <= c["end_ns"]]
    assert lost == across_kill, f"state lost without a kill in between: {lost}"

    # The kill: what the calls in flight got, and the recovery of the victim's lessee.
    in_flight = [c for c in calls if c["start_ns"] <= kill_ns <= c["end_ns"]]
    assert {c["code"] for c in in_flight} <= IN_FLIGHT_CODES, in_flight
    retried = [c for c in in_flight if c["method"] in IDEMPOTENT_METHODS and not c.get("received")]
    assert all(c["code"] == "OK" for c in retried), f"an idempotent call cut by the kill was not retried: {retried}"
    cut_answering = [c for c in in_flight if c["code"] != "OK" and c.get("received")]
    assert all(c["details"].startswith("delivery unknown") for c in cut_answering), \
        f"a call cut midway through its answer got another error than delivery unknown: {cut_answering}"
    after = sorted((c for c in by_vm[CONSUMER_VMS[0]] if c["start_ns"] > kill_ns), key=lambda c: c["start_ns"])
    first_ok = next((i for i, c in enumerate(after) if c["code"] == "OK"), None)
    assert first_ok is not None, "the killed VM's lessee was never served again"
    failed_later = [c for c in after[first_ok:] if c["code"] != "OK"]
    assert failed_later == [], f"calls failed after the lessee was served again: {failed_later}"
    others_failed = [c for c in by_vm[CONSUMER_VMS[1]] if c["code"] != "OK" and c not in in_flight]
    assert others_failed == [], f"the other lessee's calls failed: {others_failed}"

    # The VMs' own record of the calls they ran.
    assert vm_history and all(line["claim"] for line in vm_history), "a VM ran a call without a claim"
    executions = checker.executions_from_vm_lines(vm_history)
    overlaps = checker.overlapping(executions)
    assert overlaps == [], "\n".join(v.detail for v in overlaps)
    assert claims_back(executions) == [], claims_back(executions)
    ran_ok = Counter(line["method"] for line in vm_history if line["code"] == "OK")
    answered_ok = Counter(c["method"] for c in calls if c["code"] == "OK")
    assert all(ran_ok[m] >= n for m, n in answered_ok.items()), f"VMs ran {ran_ok}, the client got {answered_ok}"

    codes = Counter(c["code"] for c in calls)
    FIGURES.append("\n".join([
        f"== command VMs (docker): project {project.name}, {len(NOTEBOOK_HOSTS)} producer containers x "
        f"{VMS_PER_HOST} notebook VMs, calls through consumer3's VIP sockets",
        f"calls job: {summary}",
        f"calls by kind: " + ", ".join(f"{m} {n}" for m, n in sorted(Counter(c['method'] for c in calls).items())),
        f"outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(codes.items()))
        + f"; Get after Put: " + ", ".join(f"{k} {n}" for k, n in sorted(states.items())),
        f"kill -9 of {victim['served_by']} (pid {victim['pid']} in {host}, serving {CONSUMER_VMS[0]}): "
        f"replaced by pid {new_pid}; in flight: "
        + (", ".join(f"{c['vm']} {c['method']} {c['code']} {c['details']!r}"
                     + (f" after {c['received']} messages of its answer" if c.get("received") else "")
                     for c in in_flight) or "none")
        + f"; {first_ok} calls of its lessee failed before it was served again, "
        f"{(after[first_ok]['end_ns'] - kill_ns) / 1e9:.2f} s after the kill",
        f"VMs' own record: {len(vm_history)} calls on {len({line['vm'] for line in vm_history})} VMs under "
        f"{len({line['claim'] for line in vm_history})} claims; overlapping 0, an older claim after a newer 0",
        "timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()),
    ]))
    print("\n" + FIGURES[-1], flush=True)
