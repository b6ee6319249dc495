"""`leasenet`: one program, one subcommand per role (SPEC §7). Every flag has an environment
variable LEASENET_<FLAG> (e.g. --etcd-endpoints / LEASENET_ETCD_ENDPOINTS). Errors print one line.
The program starts in leasenet.entry, which runs `health` without importing this module."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from consumer_host.config import Limits, load_config
from consumer_host.service import ConsumerConfig
from consumer_host.service import serve as serve_consumer_host
from consumer_host.tokens import hash_token
from leasenet import certs, demo, etcd, health, inspection, presence, security, traffic
from leasenet.bench.command import cmd_bench
from leasenet.console import CliError, run_command
from leasenet.flags import add, env_name, tls_flags  # noqa: F401 - env_name: named here as before
from leasenet.presence import PresenceConfig
from mapping import keys, schema
from mapping.config import load_cluster_config
from mapping.model import HostId, HostKind
from mapping.names import check_name
from mapping.store.etcd import EtcdStore
from producer_host.limits import Limits as ProducerLimits
from producer_host.service import ProducerConfig
from producer_host.service import serve as serve_producer_host
from producer_host.vms.settings import PLACEHOLDERS, Reset, VmSettings, check_settings, expand
from registry.service import RegistryConfig
from registry.service import serve as serve_registry
from registry.watchers import DEFAULT_BACKLOG, DEFAULT_MAX_WATCHERS, WatchLimits
from wire import logs, metrics, rpc, version
from wire.lifecycle import run_until_signalled
from wire.tls import Identity, Kind, TlsMaterial, identity_of_certificate
from wire.v1 import consumer_pb2 as cpb
from wire.v1 import consumer_pb2_grpc as cpb_grpc

log = logging.getLogger("leasenet")


def _common(p: argparse.ArgumentParser) -> None:
    add(p, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    add(p, "--ready-file", help="write {'address': ...} here once serving (for supervisors and tests)")
    add(p, "--metrics-listen", default="", help="host:port of a plaintext Prometheus /metrics endpoint (port 0 = any "
        "free port; empty = none); METRICS.md lists the metrics")
    add(p, "--log-format", default="text", choices=logs.FORMATS,
        help="text, or json: one object per line (time, level, kind, host, trace_id, request_id)")
    # for tests only (wire/version.py): announce another release or protocol versions than the build's
    add(p, "--announce-version", default="", help=argparse.SUPPRESS)


def _otlp(p: argparse.ArgumentParser) -> None:
    add(p, "--otlp-endpoint", default="", help="export spans to this OTLP/gRPC collector (host:port, "
        "http:// or https://); without it the trace id appears in logs only")


def _etcd(p: argparse.ArgumentParser) -> None:
    add(p, "--etcd-endpoints", required=True, help="comma-separated list of etcd members: https://host:port "
        "(host:port with --insecure)")


LIMITS = Limits()  # the consumer host's defaults
# producer host limits (producer_host.limits.Limits: a flag per field); past one, RESOURCE_EXHAUSTED
PRODUCER_LIMITS = (
    ("--vm-queue", "requests queued for one VM behind the running one"),
    ("--early-frames", "frames of the host waiting for their claim to reach its replica"),
    ("--early-bytes", "payload bytes of those frames"),
    ("--stream-in-flight", "requests of one tunnel stream given to VMs and not yet answered"),
    ("--stream-in-flight-bytes", "payload bytes of those requests"),
    ("--reply-queue", "answers of one stream waiting to be written before the host stops reading it"),
    ("--streams-per-peer", "tunnel streams one consumer host may hold open"),
    ("--concurrent-rpcs", "RPCs the server runs at once"),
    ("--streams-per-connection", "HTTP/2 streams on one connection"),
    ("--handler-timeout", "seconds a handler may run at most, whatever the request's deadline"),
)


def _vm_drivers(p: argparse.ArgumentParser) -> None:
    """Producer VMs that are processes (--vm-command) or endpoints (--vm-endpoint), not handlers."""
    d = VmSettings()
    add(p, "--vm-command", default="", help="run each VM as this command, one process each, e.g. '{python} -m "
        "my.server --listen unix://{socket}'; placeholders {port} or {socket} (where its gRPC server listens), "
        "{vm_id}, {address}, {workdir} (its own empty dir), {python}; it must serve grpc.health.v1")
    add(p, "--vm-endpoint", action="append", help="a VM something else runs, at unix:///path or a loopback "
        "host:port (repeatable; one VM each); the host only health-checks it")
    add(p, "--vm-reset", default=None, choices=[r.value for r in Reset], help="between lessees: restart (the "
        "default for --vm-command: a used VM is stopped and started empty) or none (the process and its state "
        "pass to the next lessee; the only choice for --vm-endpoint)")
    add(p, "--vm-memory-mb", default=0, type=int, help="memory limit of each VM process (a cgroup v2 where one can "
        "be made, else RLIMIT_AS); 0 = none")
    add(p, "--vm-nice", default=0, type=int, help="nice value of each VM process (-20..19)")
    add(p, "--vm-cpus", default=0.0, type=float, help="CPU quota of each VM process in CPUs (cgroup v2 only); 0 = none")
    add(p, "--vm-stop-grace", default=d.stop_grace_s, type=float, help="seconds between SIGTERM and SIGKILL when a "
        "VM process is stopped")
    add(p, "--vm-health-interval", default=d.health_interval_s, type=float, help="seconds between health checks of "
        f"a serving VM ({d.health_failures} failures in a row withdraw it)")
    add(p, "--vm-ready-timeout", default=d.ready_timeout_s, type=float, help="seconds a started VM process has to "
        "answer its health check SERVING before it is restarted")


def vm_settings(args: argparse.Namespace) -> VmSettings:
    """The --vm-* flags checked together (a clash is one line naming the flags)."""
    try:
        settings = check_settings(command=args.vm_command, endpoints=tuple(args.vm_endpoint), reset=args.vm_reset,
                                  handler_given=args.handler is not None, vms_given=args.vms is not None,
                                  memory_mb=args.vm_memory_mb, nice=args.vm_nice, cpus=args.vm_cpus,
                                  stop_grace_s=args.vm_stop_grace, health_interval_s=args.vm_health_interval,
                                  ready_timeout_s=args.vm_ready_timeout)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if settings.command:
        program = expand(settings.command, {name: name for name in PLACEHOLDERS} | {"python": sys.executable})[0]
        if shutil.which(program) is None:
            raise CliError(f"--vm-command: {program!r} is not an executable program found on PATH")
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leasenet", description="Lease pools of producer VMs to consumer VMs "
                                     "over a gRPC overlay. Every flag also reads LEASENET_<FLAG>.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("etcd", help="run a local etcd for development (the embedded default)")
    add(p, "--data-dir", default=".leasenet-etcd", help="where etcd keeps its data")
    add(p, "--client-port", default=2379, type=int, help="client port on 127.0.0.1")
    add(p, "--peer-port", default=2380, type=int, help="peer port on 127.0.0.1")
    add(p, "--tls-dir", default="", help="mutual TLS and etcd auth with etcd-leasenet.crt/.key and ca.crt from "
        "here (made if absent); required unless --insecure")
    add(p, "--insecure", action="store_true", help="plaintext, no auth: for local experiments only")
    add(p, "--compaction-retention", default=etcd.COMPACTION_RETENTION, type=int,
        help="revisions of history etcd keeps (compacted every 5 minutes); 0 keeps all until the space quota")

    p = sub.add_parser("etcd-bootstrap", help="enable auth on an etcd cluster over TLS: one role per kind")
    _etcd(p)
    add(p, "--tls-dir", required=True, help="directory of ca.crt and an etcd member's etcd-<member>.crt/.key")
    add(p, "--member", default=etcd.DEV_MEMBER, help="whose certificate: an etcd member's name (CN root)")
    add(p, "--enrol", action="append", help="then enrol kind/id (repeatable; kind/id+ : an identity shared by "
        "replicas whose host ids are <id>.<replica>)")

    for name, what in (("enrol", "issue a host's certificate (unless it has one) and let it write its own etcd "
                        "records only: its etcd user and role"),
                       ("decommission", "delete a host's etcd user and role (its certificate reaches nothing in "
                        "etcd any more) and its records")):
        p = sub.add_parser(name, help=what)
        _etcd(p)
        add(p, "--kind", required=True, choices=[k.value for k in etcd.ENROLLABLE], help="what the holder is")
        add(p, "--id", required=True, help="its host id (a registry's or operator's name)")
        add(p, "--tls-dir", required=True, help="directory of ca.crt (and ca.key) where the certificate is (made)")
        add(p, "--etcd-tls-dir", default="", help="where the etcd member certificate (root) is (default: --tls-dir)")
        add(p, "--member", default=etcd.DEV_MEMBER, help="whose certificate acts as etcd root: etcd-<member>.crt")
        if name == "enrol":
            add(p, "--ca-key", default="", help="the CA's private key (default: ca.key in --tls-dir)")
            add(p, "--san", action="append", help="extra DNS name or IP in the certificate")
            add(p, "--replicas", action="store_true", help="an identity shared by the replicas of one service, "
                "whose host ids are <id>.<replica> (one role and blast radius for all of them)")

    p = sub.add_parser("certs", help="make the cluster CA and certificates (ca.crt, <kind>-<id>.crt/.key)")
    actions = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    for action, what in (("create-ca", "make the cluster CA"), ("create", "issue one process's certificate"),
                         ("dev", "the CA (unless there is one) and a certificate per named process"),
                         ("list", "show the certificates in --tls-dir")):
        c = actions.add_parser(action, help=what)
        add(c, "--tls-dir", required=True, help="directory of ca.crt and <kind>-<id>.crt/.key")
        if action in ("create-ca", "create"):
            add(c, "--ca-key", default="", help="the CA's private key (default: ca.key in --tls-dir)")
            add(c, "--lifetime-days", default=0, type=int, help="validity (default: CA 3650, certificates 365)")
            add(c, "--overwrite", action="store_true", help="replace existing files")
        if action == "create":
            add(c, "--kind", required=True, choices=["registry", "producer", "consumer", "operator", "etcd"],
                help="what the holder is")
            add(c, "--id", required=True, help="host id, registry name, operator or etcd member name")
        if action in ("create", "dev"):
            add(c, "--san", action="append", help="extra DNS name or IP (etcd: every address it is reached at)")
        if action == "dev":  # no environment variables: LEASENET_REGISTRY etc. belong to other commands
            for kind in ("registry", "producer", "consumer", "operator", "etcd"):
                c.add_argument(f"--{kind}-id", dest=kind, action="append", default=[],
                               help=f"a {kind} id (repeatable)")

    p = sub.add_parser("registry", help="run a leasing agent and inspection API")
    _common(p)
    _etcd(p)
    tls_flags(p)
    add(p, "--host-id", default="registry", help="this registry's name: its certificate is registry-<id>.crt")
    add(p, "--listen", default="127.0.0.1:7000", help="host:port to serve on (port 0 = any free port)")
    add(p, "--cluster-config", help="TOML file of networks and services to publish")
    add(p, "--max-watchers", default=DEFAULT_MAX_WATCHERS, type=int, help="WatchLeases streams served at once")
    add(p, "--watch-backlog", default=DEFAULT_BACKLOG, type=int,
        help="key changes a WatchLeases stream may fall behind before it is ended (RESOURCE_EXHAUSTED)")
    add(p, "--advertise", help="host:port the other processes reach this registry at (default: --listen's)")
    add(p, "--no-sharding", action="store_true",
        help="serve every grant here instead of sharing the services out among the registries")

    p = sub.add_parser("producer-host", help="run a producer host and its producer VMs")
    _common(p)
    _etcd(p)
    tls_flags(p)
    add(p, "--host-id", required=True, help="unique name of this host")
    add(p, "--listen", default="127.0.0.1:7100", help="host:port to serve the tunnel on")
    add(p, "--advertise", default="", help="host:port consumer hosts dial (default: the bound address)")
    add(p, "--network", required=True, help="overlay network of the VMs")
    add(p, "--service", required=True, help="service the VMs provide")
    add(p, "--vms", default=None, type=int, help="number of producer VMs (default 4; with --vm-endpoint: one per "
        "endpoint)")
    add(p, "--vm-address-start", required=True, help="address of the first VM; the others follow")
    add(p, "--handler", default=None, help="in-process VMs: echo | kv | work | module:factory (default echo)")
    add(p, "--handler-option", action="append", help="key=value passed to the handler factory (repeatable)")
    add(p, "--liveness-ttl", default=3, type=int, help="seconds before a dead host's records vanish")
    add(p, "--history", help="append one JSON line per execution here (for checkers)")
    _otlp(p)
    _vm_drivers(p)
    for flag, what in PRODUCER_LIMITS:  # issue 11: what one tenant can make this host hold
        default = getattr(ProducerLimits(), flag[2:].replace("-", "_"))
        add(p, flag, default=default, type=type(default), help=f"{what} (default {default})")

    p = sub.add_parser("consumer-host", help="run a consumer host for consumer VMs")
    _common(p)
    _etcd(p)
    tls_flags(p)
    add(p, "--host-id", required=True, help="unique name of this host")
    add(p, "--listen", default="127.0.0.1:7200", help="host:port of the VM-facing API")
    add(p, "--advertise", default="", help="host:port producer hosts see (default: the bound address)")
    add(p, "--registry", required=True, help="comma-separated leasing agents (host:port), tried in turn")
    add(p, "--config", required=True,
        help="TOML file listing the attached consumer VMs, their tokens and their VIP endpoints ([[vms.vip]])")
    add(p, "--deadline", default=10.0, type=float, help="default request deadline in seconds")
    add(p, "--liveness-ttl", default=3, type=int, help="seconds before a dead host's records vanish")
    _otlp(p)
    # limits (SPEC §10): past each, RESOURCE_EXHAUSTED with a sentence
    add(p, "--max-stream-requests", default=LIMITS.stream_requests, type=int, help="requests in flight on one SendStream")
    add(p, "--max-vm-requests", default=LIMITS.vm_requests, type=int, help="requests in flight per consumer VM")
    add(p, "--max-pool-waiters", default=LIMITS.pool_waiters, type=int, help="requests waiting for a VM of one pool")
    add(p, "--max-bad-tokens", default=LIMITS.bad_tokens, type=int,
        help="wrong tokens from one address within a minute before it is refused")
    add(p, "--bad-token-block", default=LIMITS.bad_token_block_s, type=float,
        help="seconds an address that sent too many wrong tokens is refused")

    p = sub.add_parser("presence", help="keep a host record alive and watch what such a host watches, serving "
                       "nothing (a light stand-in for benches and tests)")
    _common(p)
    _etcd(p)
    tls_flags(p)
    add(p, "--kind", choices=("producer", "consumer"), required=True, help="the kind of host it stands in for")
    add(p, "--host-id", required=True, help="its host id (its certificate is <kind>-<id>.crt)")
    add(p, "--liveness-ttl", default=3, type=int, help="seconds before its record (and a consumer host's pools) vanish once it dies")
    add(p, "--no-watch", action="store_true", help="only the record: no replica")
    add(p, "--advertise", default="127.0.0.1:0", help="the address its record names (never dialled)")

    p = sub.add_parser("token", help="attach tokens: `token hash` prints the token_hash for a consumer host config")
    actions = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    actions.add_parser("hash", help="read a token from stdin, print its salted scrypt hash")

    p = sub.add_parser("send", help="act as a consumer VM and send one request")
    add(p, "--consumer-host", default="127.0.0.1:7200", help="the consumer host's VM-facing API")
    add(p, "--network", required=True, help="the consumer VM's network")
    add(p, "--src", required=True, help="the consumer VM's address")
    add(p, "--token", required=True, help="the consumer VM's token")
    add(p, "--target", required=True, help="target virtual address VIP:port")
    add(p, "--payload", default="", help="request payload (text)")
    add(p, "--idempotent", action="store_true", help="may be retried if delivery is unknown")
    add(p, "--request-id", default=0, type=int, help="request id carried end to end")
    add(p, "--timeout", default=10.0, type=float, help="deadline in seconds")
    add(p, "--json", action="store_true", help="print the response as JSON")
    tls_flags(p, operator=True)

    for name, what in (("leases", "lease pools"), ("hosts", "hosts"), ("vms", "producer VMs"),
                       ("services", "services")):
        p = sub.add_parser(name, help=f"list {what} through the inspection API")
        add(p, "--registry", default="127.0.0.1:7000", help="a registry's host:port")
        add(p, "--json", action="store_true", help="machine-readable output")
        add(p, "--watch", action="store_true", help="keep printing changes")
        tls_flags(p, operator=True)
        if name == "leases":
            add(p, "--service", default="", help="only this service")
            add(p, "--consumer-vm", default="", help="only this consumer VM (address or network/address)")
            add(p, "--consumer-host", default="", help="only leases held through this consumer host")
            add(p, "--producer-host", default="", help="only leases with a member on this producer host")
        if name == "vms":
            add(p, "--service", default="", help="only this service")
            add(p, "--host-id", default="", help="only VMs of this producer host")
            add(p, "--free", action="store_true", help="only VMs not in any pool")
        if name == "hosts":
            add(p, "--kind", default="", help="producer | consumer | registry")

    p = sub.add_parser("demo", help="the main job: a small cluster, traffic, a producer host killed midway")
    add(p, "--json", action="store_true", help="print the summary as JSON")
    add(p, "--requests", default=600, type=int, help="total requests across the consumer VMs")
    add(p, "--etcd-endpoints", default="", help="use this etcd instead of starting an embedded one")
    add(p, "--workdir", default="", help="keep logs and histories here (default: a temporary directory)")
    add(p, "--tls-dir", default="", help="the CA (with ca.key) to issue the demo's certificates from "
        "(default: a new CA in the work dir); needed with --etcd-endpoints of a TLS etcd")
    add(p, "--insecure", action="store_true", help="run the whole demo in plaintext")

    p = sub.add_parser("bench", help="the benchmark harness: overlay vs direct gRPC, leasing, failover")
    add(p, "--json", action="store_true", help="print the results as JSON")
    add(p, "--quick", action="store_true", help="a short smoke run that checks correctness only")
    add(p, "--runs", default=3, type=int, help="leasing and failover: repetitions; medians are reported")
    add(p, "--rounds", default=10, type=int, help="data path: rounds of alternating slices per cell (paired ratios)")
    add(p, "--tls", default="on", choices=["on", "off"],
        help="also measure the data path with mutual TLS on every hop (--quick: in one cell)")
    add(p, "--workdir", default="", help="keep logs here (default: a temporary directory)")
    add(p, "--scale", action="store_true", help="only the scale section: 10,000 VMs, 2,000 pools, two registries "
        "(with --quick: a small cluster)")
    add(p, "--grants-in-flight", default=0, type=int, help="--scale: grants (and releases) in flight at once in "
        "its churn and contended runs, split over the registries (default 32; --quick 8)")
    add(p, "--calls", action="store_true", help="only the call path: the notebook example's server called directly, "
        "through two generic gRPC relays and through a VIP endpoint (with --quick: a smoke run)")

    p = sub.add_parser("traffic", help="act as many consumer VMs: a fixed number of requests, recorded")
    add(p, "--consumer-host", required=True, help="comma-separated consumer hosts (host:port)")
    add(p, "--config", required=True, help="TOML file: the consumer VMs to act as, with their tokens")
    add(p, "--requests", default=1000, type=int, help="total number of requests")
    add(p, "--concurrency", default=8, type=int, help="requests in flight at once")
    add(p, "--history", default="", help="append one JSON line per request outcome here")
    add(p, "--timeout", default=0.0, type=float, help="per-request deadline in seconds (0: the config's timeout_s)")
    add(p, "--wait-for-ready", action="store_true", help="a request waits (within its deadline) while its "
        "consumer host is unreachable, as a VM's packets wait out its host's restart, instead of failing at once")
    add(p, "--json", action="store_true", help="print the outcome counts as JSON")
    tls_flags(p, operator=True)

    health.add_arguments(sub.add_parser("health", help=health.HELP))  # also run alone: leasenet.entry
    return parser


# --- running services --------------------------------------------------------------------------
def _write_ready(path: str | None, address: str, metrics_address: str = "") -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps({"address": address, "pid": os.getpid(), "metrics": metrics_address}))
        tmp.replace(path)  # atomic: a reader never sees half a file


async def _run_service(args: argparse.Namespace, serve: Callable[..., Awaitable[None]], config: Any,
                       tls: TlsMaterial | None = None) -> None:
    """etcd with the process's own certificate (its CN is the etcd user of its kind), or plaintext."""
    endpoints = rpc.split_addresses(args.etcd_endpoints, "etcd endpoint",
                                    hint="LEASENET_ETCD_ENDPOINTS, e.g. https://127.0.0.1:2379")
    metrics_address = _serve_metrics(args)
    store = await EtcdStore(endpoints, tls=tls or getattr(config, "tls", None)).connect()
    try:
        log.info("leasenet %s", version.ours())
        # before any record is read or written: a process of another key schema does not start
        await schema.check(store, version.ours(), mark=args.command == "registry")
        await run_until_signalled(lambda stop: serve(config, store, stop=stop, ready=lambda address: _write_ready(
            args.ready_file, address, metrics_address)))
    finally:
        await store.close()


def _serve_metrics(args: argparse.Namespace) -> str:
    """/metrics when --metrics-listen is given; its bound host:port, or "" when off (and then
    nothing is recorded)."""
    if not args.metrics_listen:
        metrics.turn_off()  # nothing to serve: the request path records nothing either
        return ""
    try:
        address = metrics.serve(args.metrics_listen, kind=args.command.replace("-", "_"),
                                version=version.ours().release, event_loop=args.event_loop)
    except metrics.MetricsConfigError as exc:
        raise CliError(str(exc)) from None
    log.info("metrics on http://%s/metrics", address)
    return address


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--handler-option {pair!r} is not key=value")
        out[key] = value
    return out


def _own_tls(args: argparse.Namespace, kind: Kind) -> TlsMaterial | None:
    """A host process's TLS material, as `kind`/--host-id (None with --insecure). The certificate
    must be that identity's, or a replicated identity's whose replicas' host ids are
    <id>.<replica>: etcd lets it write its own records only, so any other id fails now, in one line."""
    try:
        identity = Identity(kind, args.host_id)
    except ValueError as exc:
        raise CliError(f"--host-id: {exc}") from None
    tls = security.credentials(args, identity).tls
    holder = identity_of_certificate(tls.cert) if tls is not None else None
    if tls is not None and (holder is None or holder.kind is not kind or not keys.covers(holder.id, args.host_id)):
        raise CliError(f"--host-id {args.host_id}: the certificate given is {holder or 'no leasenet identity'}'s, "
                       f"which writes the records of {kind.value} {holder.id if holder else '-'} (and "
                       f"{holder.id if holder else '-'}.<replica>) only")
    return tls


def cmd_registry(args: argparse.Namespace) -> None:
    tls = _own_tls(args, Kind.REGISTRY)
    cluster = load_cluster_config(args.cluster_config) if args.cluster_config else None
    config = RegistryConfig(listen=args.listen, cluster=cluster, tls=tls, registry_id=args.host_id,
                            advertise=args.advertise, sharding=not args.no_sharding,
                            watch=WatchLimits(max_watchers=args.max_watchers, backlog=args.watch_backlog))
    asyncio.run(_run_service(args, serve_registry, config))


def _names(*flags: tuple[str, str]) -> None:
    """Each (flag, value) a valid name (mapping.names), else the CLI's one line naming the flag."""
    for flag, value in flags:
        try:
            check_name(flag, value)
        except ValueError as exc:
            raise CliError(str(exc)) from None


def cmd_producer_host(args: argparse.Namespace) -> None:
    vm = vm_settings(args)
    vms = len(vm.endpoints) if vm.endpoints else (4 if args.vms is None else args.vms)
    if vms < 1:
        raise CliError("--vms must be at least 1")
    _names(("--network", args.network), ("--service", args.service))
    tls = _own_tls(args, Kind.PRODUCER)
    try:
        limits = ProducerLimits(**{flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
                           for flag, _ in PRODUCER_LIMITS})
    except ValueError as exc:
        raise CliError(f"--{exc}") from None
    config = ProducerConfig(host_id=HostId(args.host_id), listen=args.listen, advertise=args.advertise,
                            network=args.network, service=args.service, vms=vms,
                            vm_address_start=args.vm_address_start, handler=args.handler or "echo",
                            handler_options=_options(args.handler_option), liveness_ttl_s=args.liveness_ttl,
                            history_path=args.history, tls=tls, limits=limits,
                            otlp_endpoint=args.otlp_endpoint, vm=vm)
    config.vm_addresses()  # validates the start address
    asyncio.run(_run_service(args, serve_producer_host, config))


def cmd_consumer_host(args: argparse.Namespace) -> None:
    tls = _own_tls(args, Kind.CONSUMER)
    limits = Limits(stream_requests=args.max_stream_requests, vm_requests=args.max_vm_requests,
                    pool_waiters=args.max_pool_waiters, bad_tokens=args.max_bad_tokens,
                    bad_token_block_s=args.bad_token_block)
    attachments, vips = load_config(args.config)
    config = ConsumerConfig(host_id=HostId(check_name("--host-id", args.host_id)), listen=args.listen,
                            advertise=args.advertise, registries=rpc.split_addresses(args.registry, "registry"),
                            attachments=attachments, vips=tuple(vips), default_deadline_s=args.deadline,
                            liveness_ttl_s=args.liveness_ttl, limits=limits, tls=tls, otlp_endpoint=args.otlp_endpoint)
    asyncio.run(_run_service(args, serve_consumer_host, config))


def cmd_presence(args: argparse.Namespace) -> None:
    kind = Kind(args.kind)
    config = PresenceConfig(HostKind(args.kind), HostId(check_name("--host-id", args.host_id)), args.advertise,
                            liveness_ttl_s=args.liveness_ttl, watch=not args.no_watch)
    asyncio.run(_run_service(args, presence.serve, config, tls=_own_tls(args, kind)))


def cmd_token(args: argparse.Namespace) -> None:
    """`leasenet token hash`: the token from stdin (never argv, which `ps` shows), its hash to stdout."""
    token = getpass.getpass("token: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    print(hash_token(token))


def cmd_send(args: argparse.Namespace) -> None:
    me = security.operator(args)

    async def send() -> Any:
        async with me.channel(args.consumer_host, Kind.CONSUMER) as channel:
            return await cpb_grpc.ConsumerHostStub(channel).Send(cpb.SendRequest(
                network=args.network, src=args.src, token=args.token, target=args.target,
                payload=args.payload.encode(), idempotent=args.idempotent, request_id=args.request_id),
                timeout=args.timeout)

    resp = asyncio.run(send())
    if args.json:
        print(json.dumps({"src": f"{resp.src}:{resp.src_port}", "dst": resp.dst, "request_id": resp.request_id,
                          "payload": resp.payload.decode(errors="replace")}))
    else:
        print(f"{resp.src}:{resp.src_port} -> {resp.dst}: {resp.payload.decode(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    def command() -> None:
        args = build_parser().parse_args(argv)
        if getattr(args, "announce_version", ""):
            version.announce_as(args.announce_version)
        logs.setup(getattr(args, "log_level", "WARNING"), getattr(args, "log_format", "text"),
                   kind=PROCESS_KINDS.get(args.command, args.command), host=getattr(args, "host_id", "") or "")
        if args.command in ("registry", "producer-host", "consumer-host"):
            # uvloop when installed (the `perf` extra): less CPU per message; leasenet_build_info names it
            args.event_loop = rpc.install_event_loop()
        COMMANDS[args.command](args)
    return run_command(command)


PROCESS_KINDS = {"registry": "registry", "producer-host": "producer", "consumer-host": "consumer"}
COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "etcd": etcd.cmd_etcd,
    "etcd-bootstrap": etcd.cmd_etcd_bootstrap,
    "enrol": etcd.cmd_enrol,
    "decommission": etcd.cmd_decommission,
    "certs": certs.cmd_certs,
    "registry": cmd_registry,
    "producer-host": cmd_producer_host,
    "consumer-host": cmd_consumer_host,
    "presence": cmd_presence,
    "token": cmd_token,
    "send": cmd_send,
    "health": health.cmd_health,
    "leases": inspection.cmd_leases,
    "hosts": inspection.cmd_hosts,
    "vms": inspection.cmd_vms,
    "services": inspection.cmd_services,
    "demo": demo.cmd_demo,
    "bench": cmd_bench,
    "traffic": traffic.cmd_traffic,
}

if __name__ == "__main__":
    sys.exit(main())
