"""What this build is, what it speaks, and which peers and etcd key schemas it works with. Pure but
for reading the package's own version once (no grpc).

A process announces itself in one line (its host record's `version`, the `leasenet-version` gRPC
metadata, `leasenet hosts`, `leasenet health`):

    0.1.0 tunnel=1 leasing=1 keys=1

- the release: the package version (pyproject.toml); for people, no rule reads it;
- tunnel=A-B: the versions of the host-to-host protocol (tunnel.proto) it speaks, oldest-newest;
- leasing=A-B: the same for the leasing and inspection protocol (registry.proto);
- keys=N: the etcd key schema it reads and writes (mapping/keys.py: ROOT is /leasenet/vN/).

A protocol's version goes up only when a peer of the old one would misread the new messages (a
field whose meaning changes, a message it must not ignore); a field an old peer may ignore keeps
the version. A build that brings version N+1 of a protocol keeps speaking N for a release
(oldest = N), so that release R and R+1 run side by side through a rolling upgrade.

The rule (`mismatch`): two peers work together on a protocol when their ranges overlap; otherwise
the one that notices refuses with a sentence naming both versions (VersionMismatch). A peer that
announces nothing is a build from before versions were announced: it speaks version 1 of
everything (LEGACY). The key schema is one number: etcd holds the one its marker names
(mapping/schema.py), and a process of another schema does not start (`schema_mismatch`).

For tests, a process may announce another version than its build's (`announce_as`: the hidden
flag --announce-version, env LEASENET_ANNOUNCE_VERSION): release N and N+1 side by side, or an
incompatible pair, from one tree. It changes what the process says and checks, not what it speaks."""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass

from wire.errors import VersionMismatch
from wire.verdict import Refusal

METADATA_KEY = "leasenet-version"  # gRPC metadata: the caller's announcement; the server's, initial
MAX_TEXT = 200  # an announcement longer than this is refused unread


class Protocol(enum.StrEnum):
    TUNNEL = "tunnel"  # consumer host -> producer host: Tunnel.Exchange, Tunnel.Call
    LEASING = "leasing"  # consumer host -> registry, registry -> registry, operators: Leasing, Inspection


@dataclass(frozen=True, slots=True)
class Versions:
    """The versions of one protocol a build speaks: oldest..newest."""

    oldest: int
    newest: int

    def __post_init__(self) -> None:
        if not 1 <= self.oldest <= self.newest:
            raise ValueError(f"versions {self.oldest}-{self.newest} are not a range of positive numbers")

    def __str__(self) -> str:
        return str(self.newest) if self.oldest == self.newest else f"{self.oldest}-{self.newest}"

    def overlaps(self, other: Versions) -> bool:
        return self.oldest <= other.newest and other.oldest <= self.newest

    @classmethod
    def parse(cls, text: str) -> Versions:
        oldest, _, newest = text.partition("-")
        return cls(int(oldest), int(newest or oldest))


@dataclass(frozen=True, slots=True)
class Speaks:
    """A build's (or a peer's) announcement."""

    release: str
    tunnel: Versions
    leasing: Versions
    keys: int

    def __post_init__(self) -> None:
        if self.keys < 1:
            raise ValueError(f"key schema {self.keys} is not a positive number")

    def __str__(self) -> str:
        return f"{self.release} tunnel={self.tunnel} leasing={self.leasing} keys={self.keys}"

    def of(self, protocol: Protocol) -> Versions:
        return self.tunnel if protocol is Protocol.TUNNEL else self.leasing

    def describe(self, protocol: Protocol) -> str:
        return f"leasenet {self.release}, {protocol.value} protocol {self.of(protocol)}"


# what this tree speaks: bump here (and say why in ARCHITECTURE.md "Versions and compatibility")
TUNNEL = Versions(1, 1)
LEASING = Versions(1, 1)
KEY_SCHEMA = 2  # mapping/keys.py ROOT must be /leasenet/v<KEY_SCHEMA>/ (tests/unit/test_version.py)
LEGACY = Speaks("(unversioned)", Versions(1, 1), Versions(1, 1), 1)


def parse(text: str, base: Speaks = LEGACY) -> Speaks:
    """An announcement: the release, then `name=versions` tokens; a protocol it leaves out is
    `base`'s; a name we do not know (a newer build's protocol) is skipped. ValueError with a sentence."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"a version announcement is at most {MAX_TEXT} characters")
    release, *tokens = text.split() or [""]
    if not release or "=" in release:
        raise ValueError(f"version {text!r} does not begin with a release (e.g. '0.1.0 tunnel=1-2')")
    fields: dict[str, object] = {"release": release}
    for token in tokens:
        name, sep, value = token.partition("=")
        try:
            if name in ("tunnel", "leasing"):
                fields[name] = Versions.parse(value)
            elif name == "keys":
                fields[name] = int(value)
        except ValueError:
            raise ValueError(f"version {text!r}: {token!r} is not name=N or name=N-M") from None
        if not sep:
            raise ValueError(f"version {text!r}: {token!r} is not name=N or name=N-M")
    try:
        return dataclasses.replace(base, **fields)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"version {text!r}: {exc}") from None


@functools.lru_cache(maxsize=64)  # a handful of peer versions per process: parsed once each
def _peer(text: str) -> Speaks:
    return parse(text)


def peer(metadata: Iterable[tuple[str, str | bytes]] | None) -> Speaks:
    """What a caller announced in its gRPC metadata; LEGACY when it said nothing. ValueError when
    the announcement cannot be read."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return _peer(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return LEGACY


def mismatch(protocol: Protocol, ours: Speaks, theirs: Speaks, us: str, them: str) -> str | None:
    """Why `us` (speaking `ours`) and `them` cannot work together on `protocol`, or None when they can."""
    if ours.of(protocol).overlaps(theirs.of(protocol)):
        return None
    return (f"{them} ({theirs.describe(protocol)}) and {us} ({ours.describe(protocol)}) have no {protocol.value} "
            f"protocol version in common: refused; upgrade the older one")


def check_peer(protocol: Protocol, metadata: Iterable[tuple[str, str | bytes]] | None, us: str,
               them: str) -> Refusal | None:
    """A server's check of its caller (its call's metadata): None when they work together."""
    try:
        theirs = peer(metadata)
    except ValueError as exc:
        return Refusal(VersionMismatch, f"{them} announced a version {us} cannot read: {exc}")
    why = mismatch(protocol, ours(), theirs, us, them)
    return None if why is None else Refusal(VersionMismatch, why)


def schema_mismatch(ours: Speaks, held: int, written_by: str) -> str | None:
    """Why a process speaking `ours` must not use an etcd whose marker says key schema `held`
    (written by release `written_by`), or None when it reads that schema."""
    if held == ours.keys:
        return None
    return (f"etcd holds key schema {held} (written by leasenet {written_by}) and this process (leasenet "
            f"{ours.release}) reads key schema {ours.keys} only: it would misread the records; refused")


def build() -> Speaks:
    """This tree's own announcement."""
    try:
        release = importlib.metadata.version("leasenet")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
        release = "0+unknown"
    return Speaks(release, TUNNEL, LEASING, KEY_SCHEMA)


_announced: tuple[Speaks, tuple[tuple[str, str]]] | None = None  # and as metadata, made once


def _announce(speaks: Speaks) -> tuple[Speaks, tuple[tuple[str, str]]]:
    global _announced
    _announced = (speaks, ((METADATA_KEY, str(speaks)),))
    return _announced


def ours() -> Speaks:
    """What this process announces and checks with: its build's, unless a test said otherwise."""
    return (_announced or _announce(build()))[0]


def metadata() -> tuple[tuple[str, str]]:
    """Our announcement as gRPC metadata, for a call or a server's initial metadata."""
    return (_announced or _announce(build()))[1]


def announce_as(text: str) -> Speaks:
    """For tests only (--announce-version): announce `text` over the build's own versions, e.g.
    '0.2.0 tunnel=1-2' (release 0.2.0, leasing and keys as built)."""
    return _announce(parse(text, build()))[0]
