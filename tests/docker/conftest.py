"""Reusable helpers for tests that run the docker/compose.yaml deployment.

Fixtures:
  docker_engine     session: a working docker engine + compose (runs docker/install-docker.sh)
  base_images       session: leasenet-base:bookworm and leasenet-etcd:3.5 (docker/build-base.sh)
  leasenet_image    session: leasenet:latest from the repo's wheelhouse and the deployment's
                    certificates in docker/certs/ (docker/build-images.sh)
  compose_project   factory: ComposeProject objects with unique names, always `down -v`'d
The deployment runs secure: certificates in docker/certs/<service> (build-images.sh makes them),
etcd over mutual TLS with auth on, networks `core` (servers) and `vms` (consumer side).
FIGURES: text blocks appended by tests, printed in the terminal summary (also under -q).

Containers are found by compose labels, never by name: docker-compose v1 names them
`proj_svc_1`, `docker compose` v2 `proj-svc-1`. Set LEASENET_COMPOSE="docker compose" to
use v2; LEASENET_SKIP_DOCKER=1 skips every docker test; LEASENET_KEEP_PROJECTS=1 keeps
projects up after the test (for debugging; remove them with `docker-compose -p NAME down -v`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ETCD_IMAGE = "leasenet-etcd:3.5"
LEASENET_IMAGE = "leasenet:latest"
ETCD_MEMBERS = ("etcd1", "etcd2", "etcd3")
ETCD_ENDPOINTS = "https://etcd1:2379,https://etcd2:2379,https://etcd3:2379"
CERTS_DIR = DOCKER_DIR / "certs"  # made by docker/make-certs.sh: one directory per service
TLS_DIR = "/etc/leasenet-tls"  # where every service finds its own certificates
PROBE = Path(__file__).with_name("probe.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: runs containers; needs root or a docker engine")


# Text blocks tests want shown after the run (the deployment test's faults and checker figures),
# printed in the terminal summary even under -q and when the output is captured.
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("docker deployment figures")
        for block in FIGURES:
            terminalreporter.write_line(block)


def pytest_collection_modifyitems(config, items):
    # The first docker test also pays for the session fixtures (apt install, debootstrap,
    # image builds: ~75 s cold here, more on a slow mirror), so lift a global pytest-timeout.
    if not config.pluginmanager.hasplugin("timeout"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.timeout(900))


def run(*cmd: str, timeout: float = 120, check: bool = True, env=None) -> subprocess.CompletedProcess:
    """Run a command, capture text output; on failure raise with its output in the message."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return run("docker", *args, timeout=timeout, check=check)


def docker_ok() -> bool:
    try:
        return docker("info", timeout=15, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def compose_command() -> list[str]:
    if os.environ.get("LEASENET_COMPOSE"):
        return shlex.split(os.environ["LEASENET_COMPOSE"])
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return ["docker", "compose"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if os.environ.get("LEASENET_SKIP_DOCKER") == "1":
        pytest.skip("LEASENET_SKIP_DOCKER=1")
    if not docker_ok():
        if os.geteuid() != 0:
            pytest.skip("no docker engine, and not root to install one")
        # Installs packages only if missing; starts dockerd only if it does not answer.
        run(str(DOCKER_DIR / "install-docker.sh"), timeout=600)
    assert docker_ok(), "docker engine still not answering after install-docker.sh"


@pytest.fixture(scope="session")
def base_images(docker_engine) -> None:
    run(str(DOCKER_DIR / "build-base.sh"), timeout=900)  # no-op when both images exist


@pytest.fixture(scope="session")
def leasenet_image(base_images) -> str:
    # Checked every session so the image holds the code under test (rebuilt only when the
    # work tree changed since: build-images.sh compares a hash of it with the image's label).
    run(str(DOCKER_DIR / "build-images.sh"), str(REPO), timeout=900)
    return LEASENET_IMAGE


class ComposeProject:
    """One `docker/compose.yaml` project under a unique name, driven from a test."""

    def __init__(self, prefix: str = "lnt", env: dict[str, str] | None = None):
        # Letters and digits only: v1 strips anything else from project names, v2 doesn't.
        self.name = prefix + uuid.uuid4().hex[:8]
        self.env = dict(os.environ)
        self.env.setdefault("LEASENET_ETCD_IMAGE", ETCD_IMAGE)  # offline: never the registry one
        self.env["LEASENET_REGISTRY_PORT"] = str(free_port())
        self.env["LEASENET_REGISTRY2_PORT"] = str(free_port())
        self.env["LEASENET_PROMETHEUS_PORT"] = str(free_port())
        self.env.update(env or {})
        self.registry_port = int(self.env["LEASENET_REGISTRY_PORT"])
        self.registry2_port = int(self.env["LEASENET_REGISTRY2_PORT"])
        self.prometheus_port = int(self.env["LEASENET_PROMETHEUS_PORT"])

    # -- compose --------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", self.name, *args]
        return run(*cmd, timeout=timeout, check=check, env=self.env)

    def up(self, *services: str, wait: bool = True, timeout: float = 180) -> None:
        """`up -d` the services (all if none), then wait until those with a healthcheck
        are healthy and the others running (or exited 0)."""
        self.require_images(*services)
        self.compose("up", "-d", *services, timeout=timeout)
        if wait:
            self.wait_healthy(*services, timeout=timeout)

    def require_images(self, *services: str) -> None:
        # A missing image makes docker try to pull it from a registry: fail here instead.
        wanted = set()
        if not services or any(s in ETCD_MEMBERS for s in services):
            wanted.add(self.env["LEASENET_ETCD_IMAGE"])
        if not services or any(s not in ETCD_MEMBERS for s in services):  # etcd-auth is a leasenet job
            wanted.add(self.env.get("LEASENET_IMAGE", LEASENET_IMAGE))
        missing = [i for i in sorted(wanted) if docker("image", "inspect", i, check=False).returncode]
        if missing:
            raise RuntimeError(f"images {missing} not built (docker/build-images.sh); not pulling")

    def down(self, stop_timeout: int = 1) -> None:
        # Everything is thrown away, so no long grace period: an etcd member left last
        # without quorum otherwise spends ~4 s of the default wait before it exits.
        self.compose("down", "-v", "--remove-orphans", "-t", str(stop_timeout), timeout=180)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.name}"
        return {
            kind: out.split()
            for kind, out in (
                ("containers", docker("ps", "-aq", "--filter", label).stdout),
                ("networks", docker("network", "ls", "-q", "--filter", label).stdout),
                ("volumes", docker("volume", "ls", "-q", "--filter", label).stdout),
            )
            if out.split()
        }

    # -- containers -----------------------------------------------------------------
    def services(self) -> list[str]:
        return self.compose("config", "--services", timeout=30).stdout.split()

    def container(self, service: str) -> str:
        """Id of the service's (single) container, running or not."""
        out = docker(
            "ps", "-aq",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()
        if len(out) != 1:
            raise LookupError(f"{self.name}: service {service!r} has {len(out)} containers")
        return out[0]

    def containers(self, service: str) -> list[str]:
        """Ids of every container of a (scaled) service, running or not."""
        return docker(
            "ps", "-aq",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()

    def scale(self, service: str, replicas: int, timeout: float = 180) -> None:
        """`up -d --scale service=N` of that service alone (nothing recreated, no dependency
        touched). Returns once compose has started the new containers or stopped and removed the
        extra ones; whether the new ones serve is for the caller to see (e.g. their registration)."""
        self.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", f"{service}={replicas}", service,
                     timeout=timeout)

    def state(self, service: str) -> dict:
        """docker inspect .State: Status (running/exited/paused...), ExitCode, Health.Status."""
        return json.loads(docker("inspect", "-f", "{{json .State}}", self.container(service)).stdout)

    def health(self, service: str) -> str | None:
        """'starting' / 'healthy' / 'unhealthy', or None for a service without healthcheck."""
        return (self.state(service).get("Health") or {}).get("Status")

    def wait_healthy(self, *services: str, timeout: float = 180) -> None:
        services = services or tuple(self.services())
        deadline = time.monotonic() + timeout
        pending = set(services)
        while pending:
            for svc in sorted(pending):
                st = self.state(svc)
                health = (st.get("Health") or {}).get("Status")
                if health == "healthy" or (health is None and st["Status"] == "running"):
                    pending.discard(svc)
                elif st["Status"] == "exited":
                    if health is None and st["ExitCode"] == 0:
                        pending.discard(svc)  # a finished job (traffic)
                    else:
                        raise AssertionError(f"{svc} exited {st['ExitCode']}:\n{self.logs(svc)}")
            if pending and time.monotonic() > deadline:
                detail = "\n".join(f"--- {s} ---\n{self.logs(s)}" for s in sorted(pending))
                raise TimeoutError(f"not healthy after {timeout}s: {sorted(pending)}\n{detail}")
            if pending:
                time.sleep(0.5)

    def wait_health(self, service: str, status: str, timeout: float = 60) -> None:
        """Wait until docker reports the given health status (e.g. 'unhealthy')."""
        deadline = time.monotonic() + timeout
        while (h := self.health(service)) != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} still {h!r}, not {status!r}, after {timeout}s")
            time.sleep(0.5)

    def wait_exit(self, service: str, timeout: float = 300) -> int:
        """Wait for a job container (traffic) to finish; return its exit code."""
        return int(docker("wait", self.container(service), timeout=timeout).stdout.strip())

    def logs(self, service: str, tail: int = 50) -> str:
        p = docker("logs", "--tail", str(tail), self.container(service), check=False)
        return p.stdout + p.stderr

    def print_logs(self, *services: str, tail: int = 40) -> None:
        """The services' last log lines on stdout (pytest shows them with a failure; the containers
        go with the teardown's `down -v`). Services without a container are skipped."""
        for service in services:
            try:
                print(f"===== {service} =====\n{self.logs(service, tail=tail)}")
            except LookupError:
                pass

    def exec(self, service: str, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return docker("exec", self.container(service), *cmd, timeout=timeout, check=check)

    def copy_from(self, service: str, path: str, dest: Path) -> Path:
        """docker cp out of a container; works after it exited (volumes included)."""
        docker("cp", f"{self.container(service)}:{path}", str(dest))
        return dest

    # -- faults ---------------------------------------------------------------------
    def kill(self, service: str, signal: str = "KILL") -> None:
        docker("kill", "-s", signal, self.container(service))

    def stop(self, service: str, timeout: int = 5) -> None:
        docker("stop", "-t", str(timeout), self.container(service), timeout=timeout + 30)

    def start(self, service: str) -> None:
        """Restart a killed/stopped container (same container: same volumes and data)."""
        docker("start", self.container(service))

    def pause(self, service: str) -> None:
        docker("pause", self.container(service))  # SIGSTOP-like freeze via the freezer cgroup

    def unpause(self, service: str) -> None:
        docker("unpause", self.container(service))

    def probe(self, service: str, *args: str, timeout: float = 120) -> dict[str, str]:
        """tests/docker/probe.py in a one-off container of `service`: its networks, volumes and
        certificates, none of its dependencies started. Returns the probe's JSON answer."""
        proc = self.compose("run", "--rm", "--no-deps", "-T", "-v", f"{PROBE}:/probe.py:ro", "--entrypoint", "python",
                            service, "/probe.py", *args, timeout=timeout)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def network(self, name: str = "core") -> str:
        return f"{self.name}_{name}"  # same naming in compose v1 and v2

    def disconnect(self, service: str, network: str = "core") -> None:
        """Cut the service off a project network (a partition; the container keeps running)."""
        docker("network", "disconnect", self.network(network), self.container(service))

    def connect(self, service: str, network: str = "core") -> None:
        # The service-name alias must be given again, or `etcd1` etc. stop resolving.
        docker("network", "connect", "--alias", service, self.network(network), self.container(service))


@pytest.fixture
def compose_project(docker_engine):
    """Factory: `project = compose_project(env={...})`; every project made is torn down
    with `down -v` at the end of the test, and must leave nothing behind."""
    made: list[ComposeProject] = []

    def make(prefix: str = "lnt", env: dict[str, str] | None = None) -> ComposeProject:
        project = ComposeProject(prefix, env)
        made.append(project)
        return project

    try:
        yield make
    finally:
        if os.environ.get("LEASENET_KEEP_PROJECTS") != "1":
            errors = []
            for project in made:
                try:
                    project.down()
                    if left := project.leftovers():
                        errors.append(f"{project.name} left {left}")
                except Exception as exc:  # keep tearing the others down
                    errors.append(f"{project.name}: {exc}")
            if errors:
                pytest.fail("compose teardown: " + "; ".join(errors))
