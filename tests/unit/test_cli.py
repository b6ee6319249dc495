"""The CLI's contract: every flag has an environment variable; bad input is one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consumer_host.config import load_attachments
from leasenet.cli import build_parser, env_name
from leasenet.cluster import ConsumerVm, consumer_toml
from leasenet.traffic import load_plan
from mapping.config import ClusterConfig, load_cluster_config, parse_cluster_config, to_toml
from mapping.model import LeasePolicy, Network, Service


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("LEASENET_TLS", "LEASENET_INSECURE"))}
    return subprocess.run([sys.executable, "-m", "leasenet", *args], capture_output=True, text=True, timeout=60,
                          env={**inherited, **(env or {})})


@pytest.mark.parametrize("args, needle", [
    (["send", "--consumer-host", "127.0.0.1:1", "--network", "blue", "--src", "10.1.0.1", "--token", "t",
      "--target", "10.1.255.1:7", "--timeout", "1", "--insecure"], "UNAVAILABLE"),
    (["registry", "--etcd-endpoints", "127.0.0.1:1", "--cluster-config", "/nonexistent.toml", "--insecure"],
     "cannot read"),
    (["producer-host", "--etcd-endpoints", "nonsense", "--host-id", "p", "--network", "b", "--service", "s",
      "--vm-address-start", "10.1.1.1", "--insecure"], "not host:port"),
    (["producer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "p", "--network", "b", "--service", "s",
      "--vm-address-start", "10.1.1.300", "--insecure"], "not an IPv4 address"),
    (["leases", "--registry", "127.0.0.1:1", "--insecure"], "UNAVAILABLE"),
    (["leases", "--registry", "127.0.0.1:1", "--identity", "admin"], "is not KIND/ID"),
    (["registry", "--etcd-endpoints", "127.0.0.1:1", "--tls-cert", "/x.crt"], "--tls-key, --tls-ca missing"),
    (["demo", "--requests", "3"], "at least 20"),
    (["producer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "p", "--network", "b", "--service", "s",
      "--vm-address-start", "10.1.1.1", "--insecure", "--vm-endpoint", "10.0.0.5:80"],
     "is not loopback or a unix socket: a VM must be reachable only from its producer host"),
    (["producer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "p", "--network", "b", "--service", "s",
      "--vm-address-start", "10.1.1.1", "--insecure", "--vm-command", "vm {socket}", "--handler", "kv"],
     "--handler is for in-process VMs"),
    (["producer-host", "--etcd-endpoints", "127.0.0.1:1", "--host-id", "p", "--network", "b", "--service", "s",
      "--vm-address-start", "10.1.1.1", "--insecure", "--vm-command", "no-such-program-here {socket}"],
     "'no-such-program-here' is not an executable program"),
])
def test_bad_input_is_one_clear_line_without_a_traceback(args: list[str], needle: str) -> None:
    out = run(*args)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if not line.startswith(("WARNING:", "E0000", "I0000"))]
    assert len(lines) == 1 and lines[0].startswith("leasenet: ") and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_every_flag_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASENET_ETCD_ENDPOINTS", "10.0.0.1:2379")
    monkeypatch.setenv("LEASENET_HOST_ID", "from-env")
    monkeypatch.setenv("LEASENET_NETWORK", "blue")
    monkeypatch.setenv("LEASENET_SERVICE", "echo")
    monkeypatch.setenv("LEASENET_VM_ADDRESS_START", "10.1.1.1")
    monkeypatch.setenv("LEASENET_VMS", "7")
    args = build_parser().parse_args(["producer-host"])
    assert (args.etcd_endpoints, args.host_id, args.vms) == ("10.0.0.1:2379", "from-env", 7)
    assert env_name("--vm-address-start") == "LEASENET_VM_ADDRESS_START"
    help_text = build_parser()._subparsers._group_actions[0].choices["consumer-host"].format_help()  # type: ignore[union-attr]
    assert "LEASENET_REGISTRY" in help_text and "LEASENET_CONFIG" in help_text


def test_the_vm_driver_flags_read_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("VM_COMMAND", "{python} -m vm {socket}"), ("VM_RESET", "none"), ("VM_MEMORY_MB", "256"),
                        ("VM_NICE", "5"), ("VM_STOP_GRACE", "2.5"), ("VM_HEALTH_INTERVAL", "0.5"),
                        ("VM_READY_TIMEOUT", "9"), ("VM_ENDPOINT", "127.0.0.1:1,unix:///run/a.sock")):
        monkeypatch.setenv(f"LEASENET_{name}", value)
    args = build_parser().parse_args(["producer-host", "--host-id", "p", "--network", "b", "--service", "s",
                                      "--vm-address-start", "10.1.1.1", "--etcd-endpoints", "127.0.0.1:1"])
    assert (args.vm_command, args.vm_reset, args.vm_memory_mb, args.vm_nice, args.vm_stop_grace,
            args.vm_health_interval, args.vm_ready_timeout, args.vm_endpoint) == (
        "{python} -m vm {socket}", "none", 256, 5, 2.5, 0.5, 9.0, ["127.0.0.1:1", "unix:///run/a.sock"])


def test_cluster_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names network 'green', which is not defined"):
        parse_cluster_config({"networks": [{"name": "blue", "vni": 1}],
                              "services": [{"name": "s", "network": "green", "target": "10.1.1.1:7"}]})
    with pytest.raises(ValueError, match="min_pool <= max_pool"):
        parse_cluster_config({"networks": [{"name": "blue", "vni": 1}],
                              "services": [{"name": "s", "network": "blue", "target": "10.1.1.1:7",
                                            "min_pool": 3, "max_pool": 2}]})
    bad = tmp_path / "bad.toml"
    bad.write_text("[[networks]\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_cluster_config(bad)


def test_a_cluster_config_written_as_toml_reads_back_the_same(tmp_path: Path) -> None:
    config = ClusterConfig([Network("blue", 100), Network("red", 200)],
                           [Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(2, 5, 9, 1.5, 3)),
                            Service("kv", "red", "10.2.255.1", 9)])
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(config))
    assert load_cluster_config(path) == config


def test_a_consumer_config_written_as_toml_reads_back_as_the_same_attachments(tmp_path: Path) -> None:
    vms = [ConsumerVm("blue", "10.1.0.1", "tok-1"), ConsumerVm("red", "10.2.0.7", 'odd "token"', "127.0.0.1:7200")]
    path = tmp_path / "consumer.toml"
    path.write_text(consumer_toml(vms, target="10.1.255.1:7", rate=2.5))
    attached = load_attachments(path)  # a traffic config: plain tokens, still read (with a warning at start)
    assert [(a.network, str(a.address)) for a in attached.values()] == [(v.network, v.address) for v in vms]
    assert all(a.secret.matches(v.token) and not a.secret.matches(v.token + "x")
               for a, v in zip(attached.values(), vms))
    plan = load_plan(path, ["127.0.0.1:7200"])
    assert (plan.target, plan.rate, [v.consumer_host for v in plan.vms]) == ("10.1.255.1:7", 2.5,
                                                                              ["", "127.0.0.1:7200"])
