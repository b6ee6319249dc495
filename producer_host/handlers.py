"""Service handlers a producer VM can run: built in `echo`, `kv`, `work`, or any `module:factory`.

A factory takes keyword options (strings, from --handler-option k=v) and returns a Handler: an async
callable from request payload to response payload. A handler raises HandlerError for a bad request;
the caller sees INVALID_ARGUMENT with its sentence."""

from __future__ import annotations

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


def work(iterations: str | int = 20_000) -> Handler:
    """Burns CPU: `iterations` rounds of SHA-256 (a payload of digits overrides the count)."""
    default = int(iterations)

    async def handle(payload: bytes) -> bytes:
        count = int(payload) if payload.strip().isdigit() else default
        digest = payload
        for _ in range(count):
            digest = hashlib.sha256(digest).digest()
        return digest.hex().encode()
    return handle


BUILTIN: dict[str, HandlerFactory] = {"echo": echo, "kv": kv, "work": work}


def load_handler(spec: str, options: dict[str, str] | None = None) -> Handler:
    """`echo` | `kv` | `work` | `package.module:factory`, called with `options` as keywords."""
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
    try:
        return factory(**(options or {}))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"handler {spec!r} rejected its options {options}: {exc}") from None
