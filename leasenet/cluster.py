"""Start leasenet processes on this machine: what the demo, the benchmark and the tests share.
Every process is `python -m leasenet ...` in its own session, with its log in the work dir; it
reports its bound address through a ready file (the 'started' handshake, across processes).

Secure by default: a cluster CA in `tls_dir` (the work dir's `tls/` unless given), every process
enrolled as it is first spawned (its certificate made, its etcd user and role created: it writes its
own records only), etcd with mutual TLS and auth, every process given `--tls-dir`,
and the operator's certificate for the harness's own calls (`channel`). `insecure=True` runs all of
it in plaintext (`--insecure`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc.aio

from consumer_host.tokens import hash_token
from leasenet import certs
from leasenet.etcd import EtcdCluster, enrol, run_sync
from mapping.store.etcd import EtcdStore
from wire import rpc
from wire.tls import Identity, Kind, TlsFiles, TlsMaterial

OPERATOR = Identity(Kind.OPERATOR, "admin")
ETCD = Identity(Kind.ETCD, "local")  # one certificate for every member (root in etcd's auth)
SECURITY_ENV = {"LEASENET_TLS_DIR", "LEASENET_TLS_CERT", "LEASENET_TLS_KEY", "LEASENET_TLS_CA", "LEASENET_INSECURE",
                "LEASENET_IDENTITY"}
KIND_OF_COMMAND = {"registry": Kind.REGISTRY, "producer-host": Kind.PRODUCER, "consumer-host": Kind.CONSUMER}


def identity_of(args: list[str]) -> Identity:
    """Whom `leasenet <args>` runs as: its command's kind (`presence`: its --kind) and its --host-id
    (a registry's default)."""
    host_id = args[args.index("--host-id") + 1] if "--host-id" in args else "registry"
    kind = Kind(args[args.index("--kind") + 1]) if args[0] == "presence" else KIND_OF_COMMAND[args[0]]
    return Identity(kind, host_id)


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    ready_file: Path
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    metrics: str = ""  # host:port of its /metrics endpoint, when the cluster serves metrics

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalCluster:
    workdir: Path
    etcd_endpoints: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    procs: dict[str, Proc] = field(default_factory=dict)
    etcd: EtcdCluster | None = None
    env: dict[str, str] = field(default_factory=dict)
    insecure: bool = False
    tls_dir: Path | None = None  # the CA and certificates; default: the work dir's tls/
    metrics: bool = False  # every leasenet process serves /metrics on a free port (Proc.metrics)
    operator_tls: TlsMaterial | None = field(default=None, init=False, repr=False)
    enrolled: set[Identity] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.insecure:
            self.tls_dir = self.tls_dir or self.workdir / "tls"
            self.operator_tls = self.tls(OPERATOR)

    # --- certificates --------------------------------------------------------------------------
    def tls(self, identity: Identity, sans: tuple[str, ...] = ()) -> TlsMaterial | None:
        """`identity`'s material, its certificate made (with the CA) on first use; None if insecure."""
        if self.insecure:
            return None
        assert self.tls_dir is not None
        certs.make_dev(self.tls_dir, [identity], sans=sans)
        return TlsFiles.in_dir(self.tls_dir, identity).load()

    def enrol(self, identity: Identity, *, replicas: bool = False) -> TlsMaterial | None:
        """`leasenet enrol`, once per identity and etcd: its certificate and its etcd user and role
        (as root, the members' certificate); None if insecure."""
        material = self.tls(identity)
        if material is not None and identity not in self.enrolled:
            root = TlsFiles.in_dir(self.tls_dir, ETCD).load()  # type: ignore[arg-type]
            run_sync(enrol(self.etcd_endpoints, root, identity, replicas=replicas))
            self.enrolled.add(identity)
        return material

    def tls_args(self) -> list[str]:
        return ["--insecure"] if self.insecure else ["--tls-dir", str(self.tls_dir)]

    def channel(self, address: str, expect: Kind) -> grpc.aio.Channel:
        """A channel to one of the cluster's servers, as the operator (inside a running loop)."""
        return rpc.channel(address, None if self.insecure else self.operator_tls, expect)

    # --- etcd ----------------------------------------------------------------------------------
    def etcd_files(self, hosts: tuple[str, ...] = ()) -> TlsFiles | None:
        """The etcd members' certificate (naming `hosts` besides localhost), None if insecure."""
        if self.insecure:
            return None
        self.tls(ETCD, sans=hosts)
        assert self.tls_dir is not None
        return TlsFiles.in_dir(self.tls_dir, ETCD)

    def use_etcd(self, etcd: EtcdCluster) -> None:
        """Run against `etcd` (started by the caller, e.g. on several addresses)."""
        self.etcd, self.etcd_endpoints = etcd, etcd.client_urls
        self.enrolled.clear()
        self.enrol(OPERATOR)  # the harness's own reads (and a test's attacker stores) as the operator

    def start_etcd(self, size: int = 1) -> list[str]:
        if not self.etcd_endpoints:
            self.use_etcd(EtcdCluster(self.workdir, size=size, tls=self.etcd_files()).start())
        return self.etcd_endpoints

    async def open_store(self, timeout_s: float = 3.0) -> EtcdStore:
        """A store on the cluster's etcd as root (the members' certificate): tests and recorders
        read and write any key."""
        tls = None if self.insecure else TlsFiles.in_dir(self.tls_dir, ETCD).load()  # type: ignore[arg-type]
        return await EtcdStore(self.etcd_endpoints, timeout_s=timeout_s, tls=tls).connect()

    # --- leasenet processes --------------------------------------------------------------------
    def spawn(self, name: str, *args: str, wait: bool = True, timeout_s: float = 30.0) -> Proc:
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = Proc(name, list(args), self.workdir / f"{name}.log", ready)
        self.procs[name] = proc
        self._start(proc)
        if wait:
            self.wait_ready(proc, timeout_s)
        return proc

    def process_env(self) -> dict[str, str]:
        """The environment of a process we start: the caller's own LEASENET_TLS_*/INSECURE/IDENTITY
        would contradict or override the flags we give (tls_args)."""
        return {**{k: v for k, v in os.environ.items() if k not in SECURITY_ENV}, **self.env, "PYTHONUNBUFFERED": "1"}

    def _start(self, proc: Proc) -> None:
        env = self.process_env()
        self.enrol(identity_of(proc.args))  # its certificate and etcd user, before it looks for them
        with open(proc.log, "ab") as out:
            proc.process = subprocess.Popen(
                [sys.executable, "-m", "leasenet", *proc.args, "--ready-file", str(proc.ready_file),
                 "--etcd-endpoints", ",".join(self.etcd_endpoints), *self.tls_args(),
                 *(["--metrics-listen", f"{self.host}:0"] if self.metrics else [])],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_presence(self, kind: Kind, host_id: str, *, watch: bool = False, wait: bool = True,
                       address: str = "127.0.0.1:1") -> Proc:
        """A host record naming `address` kept alive (and, with `watch`, that kind of host's replica):
        `leasenet presence`. Frames a test sends as that host give `address` as their source."""
        return self.spawn(f"presence-{kind.value}-{host_id}", "presence", "--kind", kind.value, "--host-id", host_id,
                          "--advertise", address, *([] if watch else ["--no-watch"]), wait=wait)

    def wait_ready(self, proc: Proc, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.ready_file.exists():
                ready = json.loads(proc.ready_file.read_text())
                proc.address, proc.metrics = ready["address"], ready.get("metrics", "")
                return proc.address
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited before it was ready:\n{proc.log_tail()}")
            time.sleep(0.02)
        raise TimeoutError(f"{proc.name} was not ready within {timeout_s:.0f} s:\n{proc.log_tail()}")

    def registry(self, name: str, cluster_config: Path, listen: str | None = None, extra: tuple[str, ...] = ()) -> Proc:
        return self.spawn(name, "registry", "--host-id", name, "--listen", listen or f"{self.host}:0",
                          "--cluster-config", str(cluster_config), *extra)

    def producer(self, host_id: str, *, network: str, service: str, vms: int | None, vm_address_start: str,
                 handler: str | None = "echo", history: bool = True, listen: str | None = None,
                 extra: tuple[str, ...] = ()) -> Proc:
        """A producer host; `extra` takes any other flags, e.g. --vm-command '...' (with handler=None,
        and vms=None for --vm-endpoint VMs, whose count is their endpoints')."""
        args = ["producer-host", "--host-id", host_id, "--listen", listen or f"{self.host}:0", "--network", network,
                "--service", service, "--vm-address-start", vm_address_start,
                *(["--vms", str(vms)] if vms is not None else []),
                *(["--handler", handler] if handler is not None else []), *extra]
        if history:
            args += ["--history", str(self.workdir / f"{host_id}.history.jsonl")]
        return self.spawn(host_id, *args)

    def consumer(self, host_id: str, *, config: Path, registries: list[str], listen: str | None = None,
                 extra: tuple[str, ...] = ()) -> Proc:
        return self.spawn(host_id, "consumer-host", "--host-id", host_id, "--listen", listen or f"{self.host}:0",
                          "--registry", ",".join(registries), "--config", str(config), *extra)

    # --- faults and shutdown -------------------------------------------------------------------
    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.alive:
            assert proc.process is not None
            os.kill(proc.process.pid, sig)
            if sig == signal.SIGKILL:
                proc.process.wait(10)

    def restart(self, name: str, timeout_s: float = 30.0) -> Proc:
        proc = self.procs[name]
        if proc.alive:
            self.signal(name, signal.SIGKILL)
        proc.ready_file.unlink(missing_ok=True)
        self._start(proc)
        self.wait_ready(proc, timeout_s)
        return proc

    def stop(self, name: str, timeout_s: float = 10.0) -> int | None:
        proc = self.procs[name]
        if proc.process is None:
            return None
        if proc.alive:
            os.kill(proc.process.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            proc.process.terminate()
            try:
                proc.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait(10)
        return proc.process.returncode

    def close(self) -> None:
        for name in reversed(list(self.procs)):  # consumers first, etcd last
            self.stop(name)
        if self.etcd is not None:
            self.etcd.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ConsumerVm:
    """A consumer VM as a consumer host's config attaches it (and `leasenet traffic` acts as it)."""

    network: str
    address: str
    token: str
    consumer_host: str = ""  # traffic configs only: the consumer host to send through
    # VIP endpoints (consumer_host/vip.py): (target, listen) pairs, e.g. ("10.1.255.1:7", "unix:///tmp/vm1.sock")
    vips: tuple[tuple[str, str], ...] = ()


DEV_SCRYPT_N = 2**10  # throwaway tokens of dev and test clusters: cheap to hash for many VMs


def consumer_toml(vms: Iterable[ConsumerVm], **settings: str | float) -> str:
    """The `[[vms]]` config a consumer host (consumer_host.config) reads back as its attachments,
    each token stored hashed (`token_hash`). With `settings` it is a traffic config instead: they
    come first as its top-level keys (target, timeout_s, rate ...), and the tokens stay in plain
    text (`token`), since `leasenet traffic` acts as the VMs and presents them."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]  # JSON strings are TOML's
    for vm in vms:
        secret = (f"token = {json.dumps(vm.token)}" if settings
                  else f"token_hash = {json.dumps(str(hash_token(vm.token, n=DEV_SCRYPT_N)))}")
        lines += ["", "[[vms]]", f"network = {json.dumps(vm.network)}", f"address = {json.dumps(vm.address)}",
                  secret]
        lines += [f"consumer_host = {json.dumps(vm.consumer_host)}"] if vm.consumer_host else []
        for target, listen in vm.vips:
            lines += ["", "[[vms.vip]]", f"target = {json.dumps(target)}", f"listen = {json.dumps(listen)}"]
    return "\n".join(lines).lstrip() + "\n"


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
