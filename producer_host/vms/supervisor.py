"""One supervisor per command or endpoint VM: it drives the life cycle (lifecycle.py) with the VM's
driver, its health probe and the host's liveness registration, and is the only writer of the VM's
record (register, withdraw, the `used` mark)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mapping.liveness import Liveness
from mapping.model import ProducerVm
from producer_host.actors import VmActor
from producer_host.vms.driver import VmDriver
from producer_host.vms.health import HealthProbe
from producer_host.vms.lifecycle import (
    BACKOFF_FORGIVEN_AFTER_S,
    Action,
    Transition,
    VmEvent,
    VmState,
    backoff_s,
    step,
)
from producer_host.vms.settings import Reset, VmSettings
from wire import metrics
from wire.errors import StoreUnavailable

log = logging.getLogger(__name__)

STARTUP_PROBE_S = 0.05  # the start-up probe's pace: restart-to-ready is what a lessee waits for
STORE_RETRY_CAP_S = 2.0
T = TypeVar("T")


class VmSupervisor:
    def __init__(self, vm: ProducerVm, driver: VmDriver, actor: VmActor, liveness: Liveness,
                 settings: VmSettings) -> None:
        self.vm = vm
        self.driver = driver
        self.actor = actor
        self.liveness = liveness
        self.settings = settings
        self.state = VmState.STARTING
        self.record: ProducerVm | None = None  # what is registered now (SERVING only)
        self.endpoint = ""  # the running incarnation's gRPC target
        self.failures = 0  # restarts in a row without a long healthy spell (the backoff's exponent)
        self.used_token = 0  # the claim that ran a call on this incarnation (0: none: the VM is warm)
        self._serving_since = 0.0
        self._restart_began: float | None = None
        self._reset = asyncio.Event()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._probe: HealthProbe | None = None
        self._exit: asyncio.Task[int] | None = None
        actor.on_claim_ended = self.claim_ended
        if settings.reset is Reset.RESTART and driver.restartable:
            actor.first_use = self.first_use

    # --- what the rest of the host asks ------------------------------------------------------------
    def registered(self) -> ProducerVm | None:
        """The record to register on a liveness re-registration: a serving VM no lessee has used
        (a used one's claim turns stale with its vanished record; its reset follows)."""
        return self.vm if self.state is VmState.SERVING and not self.used_token else None

    async def first_use(self, token: int) -> None:
        """The actor's hook before claim `token`'s first call: mark the record used, so that no
        registry grants this VM again before its reset. Raises if the store cannot be written."""
        self.used_token = token
        record = self.record
        if record is None or record.used:
            return  # withdrawn already: the claim is stale, its frames are refused
        marked = dataclasses.replace(record, used=True)
        if await self.liveness.update_vm(marked):
            self.record = marked
            log.info("VM %s: used by claim %d; reset when it ends", self.vm.vm_id, token)

    def claim_ended(self, token: int) -> None:
        """The replica saw claim `token` on this VM end; a claim that used it sends it to reset."""
        if token and token == self.used_token and self.settings.reset is Reset.RESTART and self.driver.restartable:
            self._reset.set()

    async def stop(self) -> None:
        """Withdraw and stop the VM (host drain); returns once it is stopped."""
        self._stop.set()
        if self._started:
            await self._done.wait()
        await self.driver.stop()  # idempotent; also when the loop was cancelled before it could

    # --- the loop ------------------------------------------------------------------------------------
    async def run(self) -> None:
        self._started = True
        try:
            await self._start_process()
            while self.state is not VmState.STOPPED:
                event = await self._next_event()
                await self._apply(event, step(self.state, event))
        finally:
            self.actor.endpoint = None
            if self._exit is not None:
                self._exit.cancel()
            self._done.set()
            if self._probe is not None:
                await self._probe.close()

    async def _apply(self, event: VmEvent, transition: Transition) -> None:
        if transition.state is self.state and not transition.actions:
            return
        log.info("VM %s: %s --%s--> %s%s", self.vm.vm_id, self.state, event, transition.state,
                 f" (pid {self.driver.pid})" if self.driver.pid else "")
        if self.state is VmState.SERVING and time.monotonic() - self._serving_since > BACKOFF_FORGIVEN_AFTER_S:
            self.failures = 0  # it served a good while: this failure starts the backoff afresh
        self.state = transition.state
        if transition.restart is not None and self.driver.restartable:
            metrics.VM_RESTARTS.labels(self.vm.service, transition.restart.value).inc()
            if self._restart_began is None:
                self._restart_began = time.monotonic()
        for action in transition.actions:
            await self._act(action)

    async def _act(self, action: Action) -> None:
        match action:
            case Action.REGISTER:
                await self._register()
            case Action.WITHDRAW:
                await self._withdraw()
            case Action.STOP_PROCESS:
                await self.driver.stop()
            case Action.START_PROCESS:
                await self._start_process()
            case Action.BACK_OFF:
                self.failures += 1

    async def _start_process(self) -> None:
        self.used_token = 0
        self._reset.clear()
        if self._exit is not None:
            self._exit.cancel()
        if self._probe is not None:
            await self._probe.close()
            self._probe = None
        loop = asyncio.get_running_loop()
        try:
            self.endpoint = await self.driver.start()
        except OSError as exc:  # it could not even start (EMFILE, a vanished binary): as if it exited at once
            log.warning("VM %s: cannot start: %s", self.vm.vm_id, exc)
            self._exit = loop.create_task(asyncio.sleep(0, 127))
            return
        self._probe = HealthProbe(self.endpoint)
        self._exit = loop.create_task(self.driver.exited(), name=f"exit of {self.vm.vm_id}")

    async def _register(self) -> None:
        revision = await self._retrying("register", lambda: self.liveness.add(self.vm))
        self.record = self.vm
        self.actor.endpoint = self.endpoint
        self._serving_since = time.monotonic()
        if self._restart_began is not None:
            metrics.VM_RESTART_TO_READY.labels(self.vm.service).observe(time.monotonic() - self._restart_began)
            self._restart_began = None
        log.info("VM %s: registered at %s (incarnation %s)", self.vm.vm_id, self.endpoint,
                 revision if revision is not None else "pending the host's registration")

    async def _withdraw(self) -> None:
        self.actor.endpoint = None  # no new call starts on it from now on
        self.record = None
        withdrawn = await self._retrying("withdraw", lambda: self.liveness.withdraw(self.vm))
        log.info("VM %s: withdrawn%s", self.vm.vm_id, "" if withdrawn else " (its record was gone already)")

    async def _retrying(self, what: str, write: Callable[[], Awaitable[T]]) -> T | None:
        """A write of the VM's record, again and again while etcd is away (nothing can be granted
        meanwhile anyway), until it goes through or the host stops."""
        for attempt in itertools.count(1):
            try:
                return await write()
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    log.warning("VM %s: cannot %s it while stopping: %s", self.vm.vm_id, what, exc)
                    return None
                log.warning("VM %s: cannot %s it yet (attempt %d): %s", self.vm.vm_id, what, attempt, exc)
                await asyncio.sleep(backoff_s(attempt, cap_s=STORE_RETRY_CAP_S))
        raise AssertionError("unreachable")

    # --- events --------------------------------------------------------------------------------------
    async def _next_event(self) -> VmEvent:
        waits: list[Callable[[], Awaitable[VmEvent]]] = [self._stopped]
        if self.state is VmState.STARTING:
            waits += [self._exited, self._healthy]
        elif self.state is VmState.SERVING:
            waits += [self._exited, self._unhealthy, self._reset_asked]
        elif self.state is VmState.BACKING_OFF:
            waits += [self._backed_off]
        tasks = [asyncio.ensure_future(wait()) for wait in waits]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        # the stop wins a tie: a host that drains does not restart its VMs
        events = [task.result() for task in done]
        return VmEvent.STOP if VmEvent.STOP in events else events[0]

    async def _stopped(self) -> VmEvent:
        await self._stop.wait()
        return VmEvent.STOP

    async def _exited(self) -> VmEvent:
        assert self._exit is not None
        code = await asyncio.shield(self._exit)
        log.warning("VM %s: its process exited with status %s", self.vm.vm_id, code)
        return VmEvent.EXITED

    async def _healthy(self) -> VmEvent:
        """The start-up probe: SERVING within --vm-ready-timeout (an endpoint VM may take forever)."""
        if self._probe is None:  # it did not start: its exit notice comes instead
            await asyncio.Event().wait()
        assert self._probe is not None
        deadline = time.monotonic() + self.settings.ready_timeout_s
        while not self.driver.restartable or time.monotonic() < deadline:
            if await self._probe.reachable() and await self._probe.check(min(self.settings.health_interval_s, 1.0)):
                return VmEvent.HEALTHY
            await asyncio.sleep(STARTUP_PROBE_S if self.driver.restartable else self.settings.health_interval_s)
        log.warning("VM %s: not healthy within %.1f s of its start", self.vm.vm_id, self.settings.ready_timeout_s)
        return VmEvent.READY_TIMEOUT

    async def _unhealthy(self) -> VmEvent:
        """The liveness probe: --vm-health-interval apart, unhealthy after several failures in a row."""
        assert self._probe is not None
        failed = 0
        while failed < self.settings.health_failures:
            await asyncio.sleep(self.settings.health_interval_s)
            failed = 0 if await self._probe.check(self.settings.health_interval_s) else failed + 1
        log.warning("VM %s: %d health checks failed in a row", self.vm.vm_id, failed)
        return VmEvent.UNHEALTHY

    async def _reset_asked(self) -> VmEvent:
        await self._reset.wait()
        return VmEvent.RESET

    async def _backed_off(self) -> VmEvent:
        delay = backoff_s(self.failures)
        log.info("VM %s: starting again in %.1f s (failure %d in a row)", self.vm.vm_id, delay, self.failures)
        await asyncio.sleep(delay)
        return VmEvent.BACKOFF_OVER
