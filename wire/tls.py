"""Mutual TLS for leasenet's gRPC servers and clients, and who a peer is.

Every certificate (made by `leasenet certs`) names its holder in a URI SAN,
`spiffe://leasenet/<kind>/<id>` (Identity.uri); servers of a kind also carry the DNS SAN
`<kind>.leasenet` (server_name), which clients check instead of an address, so addresses need not be
in certificates. A process given `--tls-dir D` and knowing its own kind and id finds its files there:

    D/ca.crt               the cluster CA (trusted by everyone)
    D/<kind>-<id>.crt      this process's certificate, e.g. producer-p1.crt
    D/<kind>-<id>.key      its private key (mode 0600)

Servers require a client certificate from the same CA; a server reads the caller's identity from the
TLS session (peer_identity), never from a request field.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from cryptography import x509

TRUST_DOMAIN = "leasenet"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class Kind(enum.StrEnum):
    REGISTRY = "registry"
    PRODUCER = "producer"
    CONSUMER = "consumer"
    OPERATOR = "operator"
    ETCD = "etcd"


class TlsConfigError(ValueError):
    """TLS credentials missing, unreadable or contradictory: one sentence for the user."""


@dataclass(frozen=True, slots=True)
class Identity:
    kind: Kind
    id: str

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.id):
            raise ValueError(f"{self.id!r} is not a valid {self.kind.value} id "
                             "(letters, digits, '.', '_' or '-', starting with a letter or digit, at most 63)")

    @property
    def uri(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/{self.kind.value}/{self.id}"

    @property
    def file_stem(self) -> str:
        return f"{self.kind.value}-{self.id}"

    @classmethod
    def from_uri(cls, uri: str) -> Identity | None:
        """The identity a leasenet SPIFFE URI names, or None for anything else."""
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        if not uri.startswith(prefix):
            return None
        kind, _, ident = uri[len(prefix):].partition("/")
        try:
            return cls(Kind(kind), ident)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.id}"


def server_name(kind: Kind) -> str:
    """The DNS SAN every server certificate of `kind` carries; clients expect it."""
    return f"{kind.value}.{TRUST_DOMAIN}"


def etcd_user(identity: Identity) -> str:
    """The certificate's CN, which etcd (with --client-cert-auth) takes as the user name: one user per
    identity (`leasenet enrol` makes it), so that each host's role reaches its own records only. An
    etcd member's own certificate is root's: whoever holds a member's key owns its data already."""
    return "root" if identity.kind is Kind.ETCD else f"leasenet-{identity.kind.value}-{identity.id}"


# --- files and credentials -----------------------------------------------------------------------
CA_CERT = "ca.crt"
CA_KEY = "ca.key"


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes, as grpc and etcd3aio take them."""
    ca: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: str | Path, identity: Identity) -> TlsFiles:
        d = Path(directory)
        return cls(d / CA_CERT, d / f"{identity.file_stem}.crt", d / f"{identity.file_stem}.key")

    def load(self) -> TlsMaterial:
        return TlsMaterial(ca=_read(self.ca, "CA certificate"), cert=_read(self.cert, "certificate"),
                           key=_read(self.key, "private key"))


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"the {what} {path} does not exist (make it with `leasenet certs`)") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"the {what} {path} is not PEM")
    return data


def resolve_files(identity: Identity, *, tls_dir: str | Path | None = None, cert: str | Path | None = None,
                  key: str | Path | None = None, ca: str | Path | None = None,
                  insecure: bool = False) -> TlsFiles | None:
    """The files a process uses, from `--tls-dir` (named by the convention above) and/or explicit
    `--tls-cert/--tls-key/--tls-ca` (which win); None means plaintext, chosen with `--insecure` only."""
    explicit = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if insecure:
        if tls_dir or any(explicit.values()):
            raise TlsConfigError("--insecure contradicts the TLS credentials given (--tls-dir, --tls-cert, ...)")
        return None
    if tls_dir:
        default = TlsFiles.in_dir(tls_dir, identity)
        return TlsFiles(ca=Path(ca) if ca else default.ca, cert=Path(cert) if cert else default.cert,
                        key=Path(key) if key else default.key)
    if not any(explicit.values()):
        raise TlsConfigError(f"no TLS credentials for {identity}: give --tls-dir (or --tls-cert, --tls-key "
                             "and --tls-ca), or --insecure to run without TLS")
    missing = [flag for flag, value in explicit.items() if not value]
    if missing:
        raise TlsConfigError(f"{', '.join(missing)} missing: give all of --tls-cert, --tls-key and --tls-ca, "
                             "or --tls-dir")
    return TlsFiles(ca=Path(ca), cert=Path(cert), key=Path(key))  # type: ignore[arg-type]


def server_credentials(material: TlsMaterial) -> grpc.ServerCredentials:
    """Server side of mutual TLS: callers must present a certificate from our CA."""
    return grpc.ssl_server_credentials([(material.key, material.cert)], root_certificates=material.ca,
                                       require_client_auth=True)


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: trust our CA only, present our certificate."""
    return grpc.ssl_channel_credentials(root_certificates=material.ca, private_key=material.key,
                                        certificate_chain=material.cert)


def channel_options(expected: Kind) -> list[tuple[str, str]]:
    """Verify the server by its kind's name, whatever address it was dialled at."""
    return [("grpc.ssl_target_name_override", server_name(expected))]


# --- who is calling ------------------------------------------------------------------------------
class _HasAuthContext(Protocol):
    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


def peer_identity(context: _HasAuthContext) -> Identity | None:
    """The caller's identity from its (already verified) certificate; None on a plaintext
    connection or a certificate that names no leasenet identity."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return identity_of_certificate(next(iter(pems)))


@functools.lru_cache(maxsize=1024)
def identity_of_certificate(pem: bytes) -> Identity | None:
    """Parsed once per certificate: this runs per call on hot paths."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    found = {i for i in map(Identity.from_uri, sans.get_values_for_type(x509.UniformResourceIdentifier)) if i}
    return found.pop() if len(found) == 1 else None  # two identities in one certificate: trust neither
