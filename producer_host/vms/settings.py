"""What the `--vm-*` flags ask for, checked, and the command template's expansion. Pure: no I/O
(the caller picks the port, the socket path and the work dir)."""

from __future__ import annotations

import enum
import ipaddress
import re
import shlex
from dataclasses import dataclass

SUN_PATH_MAX = 107  # bytes of a unix socket path (sun_path is 108 with its NUL)
PLACEHOLDERS = ("port", "socket", "vm_id", "address", "workdir", "python")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]*)\}")


class Reset(enum.StrEnum):
    """What happens to a VM between lessees."""

    RESTART = "restart"  # stopped and started again with an empty work dir after a lessee used it
    NONE = "none"  # kept as it is: its state passes from one lessee to the next


class DriverKind(enum.StrEnum):
    IN_PROCESS = "in-process"
    COMMAND = "command"
    ENDPOINT = "endpoint"


@dataclass(frozen=True, slots=True)
class VmSettings:
    """The producer host's `--vm-*` flags. `command` and `endpoints` exclude each other; neither
    means in-process VMs (the handlers)."""

    command: str = ""
    endpoints: tuple[str, ...] = ()
    reset: Reset = Reset.RESTART
    memory_mb: int = 0  # 0: no limit
    nice: int = 0
    cpus: float = 0.0  # a cgroup v2 cpu quota in CPUs; 0: none
    stop_grace_s: float = 5.0
    health_interval_s: float = 1.0
    ready_timeout_s: float = 30.0
    health_failures: int = 3  # consecutive failed checks that make a serving VM unhealthy

    @property
    def kind(self) -> DriverKind:
        if self.command:
            return DriverKind.COMMAND
        return DriverKind.ENDPOINT if self.endpoints else DriverKind.IN_PROCESS


def check_settings(*, command: str = "", endpoints: tuple[str, ...] = (), reset: str | None = None,
                   handler_given: bool = False, vms_given: bool = False, memory_mb: int = 0, nice: int = 0,
                   cpus: float = 0.0, stop_grace_s: float = 5.0, health_interval_s: float = 1.0,
                   ready_timeout_s: float = 30.0) -> VmSettings:
    """The flags as VmSettings, or ValueError with one sentence naming the flags that clash."""
    if command and endpoints:
        raise ValueError("--vm-command and --vm-endpoint exclude each other: the host either runs its VMs or "
                         "health-checks VMs something else runs")
    if (command or endpoints) and handler_given:
        raise ValueError(f"--handler is for in-process VMs; {'--vm-command' if command else '--vm-endpoint'} VMs "
                         "run their own gRPC server")
    if endpoints and vms_given:
        raise ValueError("--vms does not go with --vm-endpoint: the VMs are the endpoints given, one each")
    if not command and (memory_mb or nice or cpus):
        raise ValueError("--vm-memory-mb, --vm-nice and --vm-cpus limit processes the host starts: they need "
                         "--vm-command")
    if endpoints and reset == Reset.RESTART:
        raise ValueError("--vm-reset restart needs --vm-command: the host cannot restart a VM it did not start "
                         "(--vm-endpoint VMs are reset 'none')")
    if not (command or endpoints) and reset is not None:
        raise ValueError("--vm-reset applies to --vm-command VMs (in-process VMs get a fresh handler per claim)")
    if reset is not None and reset not in tuple(Reset):
        raise ValueError(f"--vm-reset must be restart or none, not {reset!r}")
    if memory_mb < 0 or cpus < 0 or not -20 <= nice <= 19:
        raise ValueError("--vm-memory-mb and --vm-cpus must not be negative, --vm-nice must be from -20 to 19")
    for flag, value in (("--vm-stop-grace", stop_grace_s), ("--vm-health-interval", health_interval_s),
                        ("--vm-ready-timeout", ready_timeout_s)):
        if value <= 0:
            raise ValueError(f"{flag} must be a positive number of seconds, not {value}")
    if command:
        check_template(command)
    checked = tuple(check_endpoint(e) for e in endpoints)
    if len(set(checked)) != len(checked):
        raise ValueError("--vm-endpoint names the same endpoint twice: each VM is one endpoint")
    return VmSettings(command=command, endpoints=checked,
                      reset=Reset(reset) if reset is not None else (Reset.RESTART if command else Reset.NONE),
                      memory_mb=memory_mb, nice=nice, cpus=cpus, stop_grace_s=stop_grace_s,
                      health_interval_s=health_interval_s, ready_timeout_s=ready_timeout_s)


def check_template(command: str) -> list[str]:
    """The command's words (shell quoting, no shell), or ValueError: an unknown placeholder, or
    neither {port} nor {socket} (the host must know where the VM's server listens)."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"--vm-command {command!r} cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("--vm-command is empty")
    used = {name for word in words for name in _PLACEHOLDER.findall(word)}
    if unknown := sorted(used - set(PLACEHOLDERS)):
        raise ValueError(f"--vm-command has unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                         f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if not used & {"port", "socket"}:
        raise ValueError("--vm-command must say where the VM's gRPC server listens: {socket} (a unix socket) or "
                         "{port} (a loopback port)")
    return words


def uses_socket(command: str) -> bool:
    return "{socket}" in command


def expand(command: str, values: dict[str, str]) -> list[str]:
    """The command's words with every placeholder replaced (each word on its own, so a value with
    spaces stays one argument)."""
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], word) for word in check_template(command)]


def endpoint_of(*, socket: str = "", port: int = 0) -> str:
    """The gRPC target of a VM's server: unix://<abs path> or 127.0.0.1:<port>."""
    if socket:
        if len(socket.encode()) > SUN_PATH_MAX:
            raise ValueError(f"unix socket path {socket!r} is longer than {SUN_PATH_MAX} bytes")
        return f"unix://{socket}"
    return f"127.0.0.1:{port}"


def check_endpoint(address: str) -> str:
    """A `--vm-endpoint`: unix:///abs/path (or unix:/abs/path) or a loopback host:port, else
    ValueError: the VM must be reachable only from its producer host (SPEC §10)."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        path = path[2:] if path.startswith("//") else path
        if not path.startswith("/"):
            raise ValueError(f"--vm-endpoint {address!r}: a unix socket needs an absolute path (unix:///run/vm.sock)")
        return endpoint_of(socket=path)
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--vm-endpoint {address!r} is not unix:///path or a loopback host:port")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--vm-endpoint {address!r} is not loopback or a unix socket: a VM must be reachable "
                         "only from its producer host")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
