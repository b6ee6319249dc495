"""Service handlers a producer VM can run: built in `echo`, `kv`, `work`, or any `module:factory`.

A factory takes keyword options (strings, from --handler-option k=v) and returns a Handler: an async
callable from request payload to response payload. A handler raises HandlerError for a bad request;
the caller sees INVALID_ARGUMENT with its sentence.

Lifecycle (SPEC §10, a VM's state is wiped before a new lessee gets it): a producer VM calls the
factory again for every claim, so whatever a handler keeps in its closure (kv's store) belongs to
one lessee. Every VM of a host shares the host's event loop, so a handler must yield to it: the
actor runs each call under the request's deadline, which can only fire at an `await`."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from collections.abc import Awaitable, Callable
from typing import Protocol


class HandlerError(Exception):
    """The request is not one this handler can serve; the message goes back to the consumer VM."""


class Handler(Protocol):
    def __call__(self, payload: bytes) -> Awaitable[bytes]: ...


HandlerFactory = Callable[..., Handler]


def echo() -> Handler:
    async def handle(payload: bytes) -> bytes:
        return payload
    return handle


def kv() -> Handler:
    """A per-VM key-value store: `PUT key value`, `GET key`, `DEL key`. State lives in the VM, so a
    consumer VM reads back what it stored only while it keeps the same leased VM."""
    data: dict[str, bytes] = {}

    async def handle(payload: bytes) -> bytes:
        op, _, rest = payload.partition(b" ")
        key, _, value = rest.partition(b" ")
        name = key.decode(errors="replace")
        match op.upper():
            case b"PUT" if key:
                data[name] = value
                return b"OK"
            case b"GET" if key:
                return data.get(name, b"")
            case b"DEL" if key:
                return b"1" if data.pop(name, None) is not None else b"0"
        raise HandlerError("kv handler: expected 'PUT <key> <value>', 'GET <key>' or 'DEL <key>'")
    return handle


# SHA-256 rounds between two yields to the event loop: 1-2 ms of CPU on this machine's
# loaded cores (a round of a 32-byte digest takes 1-3 us; only the first round hashes the payload)
WORK_CHUNK = 500


def work(iterations: str | int = 20_000, max_iterations: str | int = 1_000_000) -> Handler:
    """Burns CPU: `iterations` rounds of SHA-256; a payload of digits asks for another count, at
    most `max_iterations` (beyond it INVALID_ARGUMENT: a request cannot buy unbounded CPU).

    The rounds run on the event loop in chunks of WORK_CHUNK, with a yield between chunks, rather
    than in a thread (the GIL: a pure-Python loop in a thread still takes the loop's core) or a
    process pool (a worker cannot be stopped mid-call, so a request past its deadline would keep
    burning a core, and every call would pay for pickling and a process hop). Chunks let the actor's
    deadline cancel the work at the next yield, and let the host's other VMs run between chunks:
    a neighbour waits at most about one chunk per busy VM."""
    default, cap = int(iterations), int(max_iterations)
    if not 0 <= default <= cap:
        raise ValueError(f"iterations must be between 0 and max_iterations ({cap}), not {default}")

    async def handle(payload: bytes) -> bytes:
        count = int(payload) if payload.strip().isdigit() else default
        if count > cap:
            raise HandlerError(f"work handler: {count} iterations exceed this service's cap of {cap}")
        digest = payload
        for done in range(0, count, WORK_CHUNK):
            for _ in range(min(WORK_CHUNK, count - done)):
                digest = hashlib.sha256(digest).digest()
            await asyncio.sleep(0)
        return digest.hex().encode()
    return handle


BUILTIN: dict[str, HandlerFactory] = {"echo": echo, "kv": kv, "work": work}


def load_handler(spec: str, options: dict[str, str] | None = None) -> Handler:
    """`echo` | `kv` | `work` | `package.module:factory`, called with `options` as keywords."""
    return handler_maker(spec, options)()


def handler_maker(spec: str, options: dict[str, str] | None = None) -> Callable[[], Handler]:
    """What a producer VM calls for a fresh handler at each new claim; the first call happens here,
    so a bad spec or option fails now with a sentence, not at a lessee's first request."""
    if spec in BUILTIN:
        factory = BUILTIN[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"handler {spec!r} cannot be loaded: {exc}") from None
    else:
        raise ValueError(f"handler {spec!r} is not one of {sorted(BUILTIN)} nor a module:factory")
    kwargs = dict(options or {})

    def make() -> Handler:
        try:
            return factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"handler {spec!r} rejected its options {options}: {exc}") from None
    make()
    return make
