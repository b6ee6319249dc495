"""The token check of step 1, with its costs bounded: a token that verified once costs a SHA-256
and a constant-time compare; any other runs scrypt in a worker thread (never on the event loop),
one at a time, at most `max_pending` waiting, each source refused after repeated wrong tokens
(consumer_host/tokens.py: Throttle). Concurrent checks of one token for one VM share one scrypt.

Every refusal is a sentence for the consumer VM; none says which part of the token was wrong."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable

from consumer_host.datapath import Attachment
from consumer_host.tokens import PlainToken, Throttle, Verified, fast_digest
from mapping.model import VmId
from wire.errors import Overloaded, Unauthenticated

log = logging.getLogger(__name__)


class _Verdict(enum.Enum):
    OK = "ok"
    WRONG = "wrong"
    BLOCKED = "blocked"


class TokenGate:
    def __init__(self, throttle: Throttle, max_pending: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.throttle = throttle
        self.max_pending = max_pending
        self.clock = clock
        self.verified = Verified()
        self._pending: dict[tuple[VmId, bytes], asyncio.Task[_Verdict]] = {}
        self._slot = asyncio.Lock()  # one scrypt at a time: a flood of guesses cannot take every core
        self.wrong = 0  # wrong tokens seen (for tests and the log)

    async def check(self, attachment: Attachment, token: str, source: str) -> None:
        """Return if `token` is `attachment`'s; else Unauthenticated, or Overloaded while the source
        is throttled or too many checks wait."""
        vm, digest = attachment.vm_id, fast_digest(token)
        if self.verified.knows(vm, digest):
            return
        self._refuse_if_blocked(source)
        key = (vm, digest)
        task = self._pending.get(key)
        if task is None:
            if len(self._pending) >= self.max_pending:
                raise Overloaded(f"{self.max_pending} token checks are already waiting on this consumer host; "
                                 "try again shortly", reason="token_checks")
            task = self._pending[key] = asyncio.get_running_loop().create_task(
                self._verify(attachment, token, digest, source))
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        verdict = await asyncio.shield(task)  # a caller that leaves does not cancel the others' check
        if verdict is _Verdict.BLOCKED:
            self._refuse_if_blocked(source)
        if verdict is not _Verdict.OK:
            raise Unauthenticated(f"the token does not match consumer VM {attachment.address} in network "
                                  f"{attachment.network!r}: the source address is spoofed or the token is wrong")

    def _refuse_if_blocked(self, source: str) -> None:
        blocked = self.throttle.blocked_for(source, self.clock())
        if blocked > 0:
            raise Overloaded(f"too many wrong tokens came from this address; it is refused for another "
                             f"{blocked:.0f} s", reason="bad_tokens")

    async def _verify(self, attachment: Attachment, token: str, digest: bytes, source: str) -> _Verdict:
        async with self._slot:
            if self.throttle.blocked_for(source, self.clock()) > 0:  # blocked while it waited: no scrypt
                return _Verdict.BLOCKED
            secret = attachment.secret
            ok = secret.matches(token) if isinstance(secret, PlainToken) else \
                await asyncio.to_thread(secret.matches, token)
        if ok:
            self.verified.remember(attachment.vm_id, digest)
            return _Verdict.OK
        self.wrong += 1
        if self.throttle.failed(source, self.clock()):
            log.warning("%d wrong tokens from %s (the last for consumer VM %s): refusing it for %g s",
                        self.throttle.limit, source, attachment.vm_id, self.throttle.block_s)
        return _Verdict.WRONG


def source_of(peer: str) -> str:
    """A gRPC peer (`ipv4:10.0.0.5:41234`, `ipv6:[::1]:41234`) without its port: one source per
    address, whichever connection or port it uses."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return rest.rsplit(":", 1)[0]
    return peer
