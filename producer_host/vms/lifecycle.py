"""A supervised VM's life cycle as a pure transition table (the supervisor does the I/O).

    STARTING --healthy--> SERVING            register the record (a new incarnation)
    STARTING --exited / ready timeout--> BACKING_OFF      (restart: exit / unhealthy)
    SERVING --exited / unhealthy--> BACKING_OFF           withdraw at once, stop what is left
    SERVING --reset--> STARTING              a lessee used it: withdraw, stop, start empty
    BACKING_OFF --backoff over--> STARTING   start again
    any --stop--> STOPPED                    host drain: withdraw, stop

A VM is registered exactly while SERVING; everything else is withdrawn, so no registry grants a VM
that is starting, failing, backing off or being reset. An event a state has no row for is ignored
(a late exit notice after a stop, a reset asked of a VM that is already restarting)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VmState(enum.StrEnum):
    STARTING = "starting"  # started (or waiting for an endpoint), not yet healthy: not registered
    SERVING = "serving"  # healthy and registered: grantable unless used
    BACKING_OFF = "backing_off"  # failed: waiting before the next start
    STOPPED = "stopped"


class VmEvent(enum.StrEnum):
    HEALTHY = "healthy"  # the start-up probe answered SERVING
    READY_TIMEOUT = "ready_timeout"  # no SERVING within --vm-ready-timeout of the start
    UNHEALTHY = "unhealthy"  # the liveness probe failed several times in a row
    EXITED = "exited"  # the process ended
    RESET = "reset"  # the claim of a lessee who used the VM ended (--vm-reset restart)
    BACKOFF_OVER = "backoff_over"
    STOP = "stop"  # the host drains


class Action(enum.StrEnum):
    REGISTER = "register"
    WITHDRAW = "withdraw"
    STOP_PROCESS = "stop_process"  # SIGTERM to its group, SIGKILL after the grace
    START_PROCESS = "start_process"  # a fresh empty work dir, a new process
    BACK_OFF = "back_off"  # wait the next backoff delay, then BACKOFF_OVER


class RestartReason(enum.StrEnum):
    """Why a VM is restarted: a bounded label of leasenet_vm_restarts_total."""

    EXIT = "exit"
    UNHEALTHY = "unhealthy"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class Transition:
    state: VmState
    actions: tuple[Action, ...] = ()
    restart: RestartReason | None = None  # the transition begins a restart, for this reason


S, E, A = VmState, VmEvent, Action
TABLE: dict[tuple[VmState, VmEvent], Transition] = {
    (S.STARTING, E.HEALTHY): Transition(S.SERVING, (A.REGISTER,)),
    (S.STARTING, E.EXITED): Transition(S.BACKING_OFF, (A.BACK_OFF,), RestartReason.EXIT),
    (S.STARTING, E.READY_TIMEOUT): Transition(S.BACKING_OFF, (A.STOP_PROCESS, A.BACK_OFF), RestartReason.UNHEALTHY),
    (S.SERVING, E.EXITED): Transition(S.BACKING_OFF, (A.WITHDRAW, A.STOP_PROCESS, A.BACK_OFF), RestartReason.EXIT),
    (S.SERVING, E.UNHEALTHY): Transition(S.BACKING_OFF, (A.WITHDRAW, A.STOP_PROCESS, A.BACK_OFF),
                                         RestartReason.UNHEALTHY),
    (S.SERVING, E.RESET): Transition(S.STARTING, (A.WITHDRAW, A.STOP_PROCESS, A.START_PROCESS), RestartReason.RESET),
    (S.BACKING_OFF, E.BACKOFF_OVER): Transition(S.STARTING, (A.START_PROCESS,)),
    (S.STARTING, E.STOP): Transition(S.STOPPED, (A.STOP_PROCESS,)),
    (S.SERVING, E.STOP): Transition(S.STOPPED, (A.WITHDRAW, A.STOP_PROCESS)),
    (S.BACKING_OFF, E.STOP): Transition(S.STOPPED),
}


def step(state: VmState, event: VmEvent) -> Transition:
    """The transition `event` makes from `state`; no row: the state stays, nothing is done."""
    return TABLE.get((state, event), Transition(state))


# kubelet's CrashLoopBackOff, scaled to a VM that restarts in about a second: doubling to a cap
BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 30.0
BACKOFF_FORGIVEN_AFTER_S = 60.0  # serving this long wipes the failure count


def backoff_s(failures: int, first_s: float = BACKOFF_FIRST_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """The wait before restart number `failures` (1, 2, ...): first_s, doubling, at most cap_s."""
    return min(cap_s, first_s * 2 ** max(0, min(failures - 1, 30)))
