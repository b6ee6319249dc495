"""The pure parts of the VM drivers: the life-cycle table, the backoff, the --vm-* flags and the
command template."""

from __future__ import annotations

import pytest

from producer_host.vms.lifecycle import TABLE, Action, RestartReason, VmEvent, VmState, backoff_s, step
from producer_host.vms.settings import (
    SUN_PATH_MAX,
    DriverKind,
    Reset,
    check_endpoint,
    check_settings,
    endpoint_of,
    expand,
)


def test_a_vm_is_registered_only_on_becoming_healthy_and_withdrawn_on_every_way_out_of_serving() -> None:
    for (state, event), t in TABLE.items():
        assert (Action.REGISTER in t.actions) == (state is VmState.STARTING and event is VmEvent.HEALTHY)
        if state is VmState.SERVING:  # leaving SERVING always withdraws first, before stopping anything
            assert t.actions[0] is Action.WITHDRAW, (state, event)
    assert step(VmState.STARTING, VmEvent.HEALTHY).state is VmState.SERVING


@pytest.mark.parametrize("state, event, then, reason", [
    (VmState.SERVING, VmEvent.EXITED, VmState.BACKING_OFF, RestartReason.EXIT),
    (VmState.SERVING, VmEvent.UNHEALTHY, VmState.BACKING_OFF, RestartReason.UNHEALTHY),
    (VmState.STARTING, VmEvent.READY_TIMEOUT, VmState.BACKING_OFF, RestartReason.UNHEALTHY),
    (VmState.STARTING, VmEvent.EXITED, VmState.BACKING_OFF, RestartReason.EXIT),
    (VmState.SERVING, VmEvent.RESET, VmState.STARTING, RestartReason.RESET),
])
def test_each_way_a_vm_fails_or_is_reset_is_a_restart_with_its_reason(state, event, then, reason) -> None:
    t = step(state, event)
    assert (t.state, t.restart) == (then, reason)


def test_a_reset_restarts_at_once_with_no_backoff_and_a_failure_backs_off() -> None:
    assert step(VmState.SERVING, VmEvent.RESET).actions == (Action.WITHDRAW, Action.STOP_PROCESS, Action.START_PROCESS)
    assert Action.BACK_OFF in step(VmState.SERVING, VmEvent.EXITED).actions


@pytest.mark.parametrize("state", [VmState.STARTING, VmState.BACKING_OFF, VmState.STOPPED])
def test_a_reset_or_a_late_notice_outside_serving_changes_nothing(state) -> None:
    for event in (VmEvent.RESET, VmEvent.UNHEALTHY):
        assert step(state, event).state is state and not step(state, event).actions


def test_every_state_but_stopped_stops_and_nothing_leaves_stopped() -> None:
    for state in (VmState.STARTING, VmState.SERVING, VmState.BACKING_OFF):
        assert step(state, VmEvent.STOP).state is VmState.STOPPED
    assert all(s is not VmState.STOPPED for s, _ in TABLE)


def test_the_backoff_doubles_from_its_first_delay_to_its_cap() -> None:
    assert [backoff_s(n, 0.2, 1.0) for n in (1, 2, 3, 4, 10, 100)] == [0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_the_command_template_expands_each_word_on_its_own() -> None:
    words = expand("{python} -m vm --listen unix://{socket} --id {vm_id} --dir '{workdir}' --at {address}:{port}",
                   {"python": "/v/python", "socket": "/tmp/ln-x/vm0.sock", "vm_id": "blue/10.1.1.1",
                    "workdir": "/tmp/a dir", "address": "10.1.1.1", "port": "4000"})
    assert words == ["/v/python", "-m", "vm", "--listen", "unix:///tmp/ln-x/vm0.sock", "--id", "blue/10.1.1.1",
                     "--dir", "/tmp/a dir", "--at", "10.1.1.1:4000"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"command": "vm --listen {host}:{port}"}, "unknown placeholder(s) {host}"),
    ({"command": "vm --workdir {workdir}"}, "{socket} (a unix socket) or {port}"),
    ({"command": "vm {port}", "endpoints": ("127.0.0.1:1",)}, "exclude each other"),
    ({"command": "vm {port}", "handler_given": True}, "--handler is for in-process VMs"),
    ({"endpoints": ("127.0.0.1:1",), "vms_given": True}, "--vms does not go with --vm-endpoint"),
    ({"endpoints": ("127.0.0.1:1",), "reset": "restart"}, "cannot restart a VM it did not start"),
    ({"memory_mb": 100}, "need --vm-command"),
    ({"reset": "none"}, "applies to --vm-command VMs"),
    ({"command": "vm {port}", "stop_grace_s": 0}, "--vm-stop-grace must be a positive"),
    ({"endpoints": ("10.0.0.5:80",)}, "not loopback or a unix socket"),
    ({"endpoints": ("unix://relative.sock",)}, "absolute path"),
    ({"endpoints": ("127.0.0.1:1", "127.0.0.1:1")}, "same endpoint twice"),
])
def test_each_bad_combination_of_vm_flags_is_one_sentence(kwargs, needle) -> None:
    with pytest.raises(ValueError) as caught:
        check_settings(**kwargs)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_the_defaults_restart_command_vms_and_leave_endpoints_alone() -> None:
    assert check_settings().kind is DriverKind.IN_PROCESS
    command = check_settings(command="vm --listen unix://{socket}")
    assert (command.kind, command.reset) == (DriverKind.COMMAND, Reset.RESTART)
    endpoints = check_settings(endpoints=("unix:/run/vm.sock", "localhost:7", "[::1]:8"))
    assert (endpoints.kind, endpoints.reset) == (DriverKind.ENDPOINT, Reset.NONE)
    assert endpoints.endpoints == ("unix:///run/vm.sock", "localhost:7", "[::1]:8")


def test_an_endpoint_is_loopback_or_a_unix_socket_that_fits_in_sun_path() -> None:
    assert check_endpoint("127.0.0.2:9") == "127.0.0.2:9"
    assert endpoint_of(port=5) == "127.0.0.1:5"
    with pytest.raises(ValueError, match="longer than"):
        endpoint_of(socket="/" + "x" * SUN_PATH_MAX)
    for bad in ("example.com:80", "0.0.0.0:80", "192.168.1.1:80", "127.0.0.1", "127.0.0.1:0"):
        with pytest.raises(ValueError):
            check_endpoint(bad)
