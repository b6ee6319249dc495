"""Consumer VM attach tokens (SPEC §10): stored hashed, compared in constant time, guessed at a
bounded rate. Pure: no I/O, no asyncio; the clock is passed in.

A token is stored as `scrypt$n=16384,r=8,p=1$<salt>$<digest>` (base64, `leasenet token hash`
prints one). scrypt costs tens of milliseconds on purpose, too much for every request, so a
token that verified once is remembered per consumer VM as a SHA-256 digest, compared in constant
time (`Verified`). A plaintext `token = "..."` in a config is still accepted, with a warning at
start, so existing configs keep working until they migrate; every writer of configs in this
repository (LocalCluster) writes hashes.

Throttling (`Throttle`): a source (the connection's peer address, which the caller cannot choose,
unlike the consumer VM it claims to be) that presents `limit` wrong tokens within `window_s` is
refused for `block_s` without a check. A consumer VM whose token already verified is never
throttled: someone guessing its token from the same address cannot lock it out."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from mapping.model import VmId

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and tens of ms per check: costly to guess offline
SALT_BYTES = 16
DIGEST_BYTES = 32
MAX_TOKEN_CHARS = 1024  # a token longer than this is refused before any hashing


@dataclass(frozen=True, slots=True)
class TokenHash:
    """A salted scrypt hash of a token, as the consumer host config stores it."""

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def matches(self, token: str) -> bool:
        """The expensive check (scrypt), compared in constant time."""
        if len(token) > MAX_TOKEN_CHARS:
            return False
        candidate = hashlib.scrypt(token.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p,
                                   maxmem=256 * 1024 * 1024, dklen=len(self.digest))
        return hmac.compare_digest(candidate, self.digest)

    def __str__(self) -> str:
        return f"{SCHEME}$n={self.n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"


@dataclass(frozen=True, slots=True)
class PlainToken:
    """A token stored in plain text (a config not yet migrated): cheap to check, warned about."""

    token: str = field(repr=False)

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token.encode(), token.encode())


Secret = TokenHash | PlainToken


def hash_token(token: str, salt: bytes | None = None, n: int = SCRYPT_N) -> TokenHash:
    """`n`: scrypt's cost; below the default only for throwaway tokens (LocalCluster's dev and test
    clusters, which attach many VMs)."""
    if not token:
        raise ValueError("the token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the token is {len(token)} characters long; the limit is {MAX_TOKEN_CHARS}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=DIGEST_BYTES)
    return TokenHash(n, SCRYPT_R, SCRYPT_P, salt, digest)


def parse_token_hash(text: str) -> TokenHash:
    """The `scrypt$n=..,r=..,p=..$salt$digest` form; ValueError with a sentence otherwise."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"token_hash is not of the form {SCHEME}$n=N,r=R,p=P$<salt>$<digest> "
                         "(make one with `leasenet token hash`)")
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
        salt, digest = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (ValueError, KeyError):
        raise ValueError(f"token_hash has unreadable parameters, salt or digest (expected "
                         f"{SCHEME}$n=N,r=R,p=P$<base64 salt>$<base64 digest>)") from None
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError(f"token_hash parameters n={n}, r={r}, p={p} are out of range (n a power of two up to 2^20)")
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("token_hash has a salt shorter than 8 bytes or a digest shorter than 16")
    return TokenHash(n, r, p, salt, digest)


def fast_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Verified:
    """Per consumer VM, the SHA-256 of the token that last verified: later requests with the same
    token cost one hash and one constant-time compare instead of scrypt. Bounded by the attached
    VMs (one entry each)."""

    def __init__(self) -> None:
        self._digests: dict[VmId, bytes] = {}

    def knows(self, vm: VmId, digest: bytes) -> bool:
        known = self._digests.get(vm)
        return known is not None and hmac.compare_digest(known, digest)

    def remember(self, vm: VmId, digest: bytes) -> None:
        self._digests[vm] = digest


@dataclass(slots=True)
class _Record:
    failures: int = 0
    window_start: float = 0.0
    blocked_until: float = 0.0


class Throttle:
    """Wrong tokens per source: `limit` of them within `window_s` block the source for `block_s`.
    At most `max_sources` are tracked (the oldest forgotten first), so a flood of sources costs
    bounded memory."""

    def __init__(self, limit: int = 5, window_s: float = 60.0, block_s: float = 30.0,
                 max_sources: int = 10_000) -> None:
        self.limit, self.window_s, self.block_s, self.max_sources = limit, window_s, block_s, max_sources
        self._sources: OrderedDict[str, _Record] = OrderedDict()

    def blocked_for(self, source: str, now: float) -> float:
        """Seconds `source` stays refused; 0 if it may try."""
        record = self._sources.get(source)
        return max(0.0, record.blocked_until - now) if record is not None else 0.0

    def failed(self, source: str, now: float) -> bool:
        """Count one wrong token; True if this one blocks the source."""
        record = self._sources.pop(source, None) or _Record(window_start=now)
        self._sources[source] = record  # most recent last
        while len(self._sources) > self.max_sources:
            self._sources.popitem(last=False)
        if now - record.window_start > self.window_s:
            record.failures, record.window_start = 0, now
        record.failures += 1
        if record.failures >= self.limit:
            record.failures, record.window_start, record.blocked_until = 0, now, now + self.block_s
            return True
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
