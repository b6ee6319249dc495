"""`leasenet certs`: the cluster CA and one certificate per process (CockroachDB's `cert` commands in
spirit), made with `cryptography`. File names follow wire/tls.py (`ca.crt`, `<kind>-<id>.crt`,
`<kind>-<id>.key`) so a process given `--tls-dir` finds its own; etcd takes the same files.

    leasenet certs create-ca --tls-dir D                 D/ca.crt and D/ca.key (10 years)
    leasenet certs create --tls-dir D --kind producer --id p1 [--san HOST_OR_IP ...]   (1 year)
    leasenet certs dev --tls-dir D --registry r1 --producer p1 --consumer c1   CA (if absent) + all
    leasenet certs list --tls-dir D

Every certificate: ECDSA P-256; URI SAN spiffe://leasenet/<kind>/<id> (the identity servers
authorise); DNS SAN <kind>.leasenet (the name clients verify, whatever the address); CN = its etcd
user, leasenet-<kind>-<id> (`leasenet enrol` creates the user and its role); usable as server and client (etcd members are both to their peers). etcd
certificates also name where etcd is reached: localhost, 127.0.0.1 and every --san. Private keys
are written 0600 and never overwritten unless --overwrite. Keep ca.key off production hosts
(`--ca-key` puts it elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wire.tls import CA_CERT, CA_KEY, Identity, Kind, TlsFiles, etcd_user, server_name

CA_LIFETIME = dt.timedelta(days=3650)
CERT_LIFETIME = dt.timedelta(days=365)
CLOCK_SKEW = dt.timedelta(minutes=5)  # valid a little before "now": clocks across hosts differ
ETCD_DEFAULT_SANS = ("localhost", "127.0.0.1")

SanName = x509.DNSName | x509.IPAddress


class CertsError(ValueError):
    """A one-line reason the certificates could not be made."""


@dataclass(frozen=True, slots=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


# --- pure: names and certificates ----------------------------------------------------------------
def parse_san(text: str) -> SanName:
    """An IP address or a DNS name, as given to --san."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or not all(label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels):
        raise CertsError(f"--san {text!r} is neither an IP address nor a DNS name")
    return x509.DNSName(text.rstrip("."))


def subject_names(identity: Identity, extra: Iterable[str] = ()) -> list[SanName]:
    """The DNS and IP SANs of `identity`'s certificate, without duplicates, in a stable order."""
    texts = [server_name(identity.kind), *(ETCD_DEFAULT_SANS if identity.kind is Kind.ETCD else ()), *extra]
    names: list[SanName] = []
    for name in map(parse_san, texts):
        if name not in names:
            names.append(name)
    return names


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def build_ca(key: ec.EllipticCurvePrivateKey, now: dt.datetime, lifetime: dt.timedelta = CA_LIFETIME) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "leasenet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "leasenet cluster CA")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def build_certificate(identity: Identity, public_key: ec.EllipticCurvePublicKey, ca: Authority, now: dt.datetime,
                      *, sans: Sequence[str] = (), lifetime: dt.timedelta = CERT_LIFETIME) -> x509.Certificate:
    expires = now + lifetime
    if expires > ca.cert.not_valid_after_utc:
        raise CertsError(f"a certificate valid until {expires:%Y-%m-%d} would outlive the CA "
                         f"(valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}): give a shorter --lifetime-days")
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "leasenet"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.kind.value),
                         x509.NameAttribute(NameOID.COMMON_NAME, etcd_user(identity))])
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri), *subject_names(identity, sans)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(san, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .sign(ca.key, hashes.SHA256()))


# --- files -----------------------------------------------------------------------------------------
def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Before writing anything: a half-made pair (a new key beside an old certificate) helps nobody."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise CertsError(f"{' and '.join(existing)} exist already (give --overwrite to replace them)")


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Create `path` with `mode` from the start (a key is never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if overwrite:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CertsError(f"{path} exists already (give --overwrite to replace it)") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # the umask may have taken bits off


def create_ca(tls_dir: str | Path, *, ca_key: str | Path | None = None, lifetime: dt.timedelta = CA_LIFETIME,
              overwrite: bool = False) -> Path:
    key = new_key()
    cert = build_ca(key, dt.datetime.now(dt.UTC), lifetime)
    key_path = Path(ca_key) if ca_key else Path(tls_dir) / CA_KEY
    _refuse_existing([key_path, Path(tls_dir) / CA_CERT], overwrite)
    _write(key_path, _key_pem(key), 0o600, overwrite)
    _write(Path(tls_dir) / CA_CERT, _pem(cert), 0o644, overwrite)
    return Path(tls_dir) / CA_CERT


def load_authority(tls_dir: str | Path, ca_key: str | Path | None = None) -> Authority:
    cert_path, key_path = Path(tls_dir) / CA_CERT, Path(ca_key) if ca_key else Path(tls_dir) / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertsError(f"{exc.filename} does not exist: make the CA first (leasenet certs create-ca)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise CertsError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CertsError(f"{key_path} is not the private key of {cert_path}")
    return Authority(cert, key)


def issue(tls_dir: str | Path, identity: Identity, *, sans: Sequence[str] = (), ca_key: str | Path | None = None,
          lifetime: dt.timedelta = CERT_LIFETIME, overwrite: bool = False) -> TlsFiles:
    ca = load_authority(tls_dir, ca_key)
    key = new_key()
    cert = build_certificate(identity, key.public_key(), ca, dt.datetime.now(dt.UTC), sans=sans, lifetime=lifetime)
    files = TlsFiles.in_dir(tls_dir, identity)
    _refuse_existing([files.cert, files.key], overwrite)
    _write(files.key, _key_pem(key), 0o600, overwrite)
    _write(files.cert, _pem(cert), 0o644, overwrite)
    return files


def make_dev(tls_dir: str | Path, identities: Sequence[Identity], *, sans: Sequence[str] = ()) -> list[TlsFiles]:
    """A local cluster's certificates: the CA unless there is one, then each identity's certificate
    unless it exists (so running it again adds the new ones only)."""
    if not (Path(tls_dir) / CA_CERT).exists():
        create_ca(tls_dir)
    made = []
    for identity in identities:
        files = TlsFiles.in_dir(tls_dir, identity)
        if not files.cert.exists():
            made.append(issue(tls_dir, identity, sans=sans if identity.kind is Kind.ETCD else ()))
    return made


def describe(path: Path) -> str:
    """One line per certificate for `leasenet certs list`."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    cn = ",".join(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return f"{path.name}: CN={cn} until {cert.not_valid_after_utc:%Y-%m-%d} SAN {' '.join(names) or '-'}"


# --- the command -----------------------------------------------------------------------------------
def _identity(kind: str, ident: str) -> Identity:
    try:
        return Identity(Kind(kind), ident)
    except ValueError as exc:
        raise CertsError(str(exc)) from None


def _days(value: int) -> dt.timedelta:
    if value < 1:
        raise CertsError("--lifetime-days must be at least 1")
    return dt.timedelta(days=value)


def cmd_certs(args: argparse.Namespace) -> None:
    match args.certs_command:
        case "create-ca":
            path = create_ca(args.tls_dir, ca_key=args.ca_key or None, overwrite=args.overwrite,
                             lifetime=_days(args.lifetime_days or CA_LIFETIME.days))
            print(f"wrote {path} and its key {args.ca_key or Path(args.tls_dir) / CA_KEY}")
        case "create":
            files = issue(args.tls_dir, _identity(args.kind, args.id), sans=args.san, ca_key=args.ca_key or None,
                          lifetime=_days(args.lifetime_days or CERT_LIFETIME.days), overwrite=args.overwrite)
            print(f"wrote {files.cert} and {files.key}")
        case "dev":
            wanted = [_identity(kind, i) for kind in ("registry", "producer", "consumer", "operator", "etcd")
                      for i in getattr(args, kind)]
            wanted += [i for i in (_identity("etcd", "leasenet"), _identity("operator", "admin"))
                       if not any(w.kind is i.kind for w in wanted)]
            for files in make_dev(args.tls_dir, wanted, sans=args.san):
                print(f"wrote {files.cert} and {files.key}")
            print(f"certificates in {args.tls_dir}; export LEASENET_TLS_DIR={Path(args.tls_dir).resolve()}")
        case "list":
            for path in sorted(Path(args.tls_dir).glob("*.crt")):
                print(describe(path))
