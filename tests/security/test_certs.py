"""`leasenet certs` makes a PKI that etcd and grpc accept (the other security tests use it); here,
what is in the files: identities in SANs, CNs naming etcd users, lifetimes, 0600 keys."""

from __future__ import annotations

import datetime as dt
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from leasenet import certs
from tests.security.conftest import PROCESSES
from wire.tls import Identity, Kind, TlsFiles, etcd_user, identity_of_certificate


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize("identity", PROCESSES, ids=str)
def test_each_certificate_names_its_holder_and_its_kind_s_server_name(pki: Path, identity: Identity) -> None:
    files = TlsFiles.in_dir(pki, identity)
    cert = _cert(files.cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [identity.uri]
    assert f"{identity.kind.value}.leasenet" in sans.get_values_for_type(x509.DNSName)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == etcd_user(identity)
    assert identity_of_certificate(files.cert.read_bytes()) == identity
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_etcd_certificates_name_the_addresses_etcd_is_reached_at(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    files = certs.issue(tmp_path, Identity(Kind.ETCD, "etcd1"), sans=["etcd1", "10.0.0.5"])
    sans = _cert(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["etcd.leasenet", "localhost", "etcd1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5"]


def test_certificates_live_a_year_and_the_ca_ten(pki: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = _cert(pki / "ca.crt")
    leaf = _cert(TlsFiles.in_dir(pki, PROCESSES[0]).cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert dt.timedelta(days=3649) < ca.not_valid_after_utc - now <= dt.timedelta(days=3650)
    assert dt.timedelta(days=364) < leaf.not_valid_after_utc - now <= dt.timedelta(days=365)
    assert leaf.not_valid_before_utc < now  # a little slack for clocks that differ
    assert leaf.issuer == ca.subject


def test_private_keys_are_readable_by_their_owner_only(pki: Path) -> None:
    keys = sorted(pki.glob("*.key"))
    assert len(keys) == len(PROCESSES) + 1  # and the CA's
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((pki / "ca.crt").stat().st_mode) == 0o644


def test_existing_files_are_never_overwritten_unless_asked(tmp_path: Path) -> None:
    certs.create_ca(tmp_path)
    files = certs.issue(tmp_path, Identity(Kind.PRODUCER, "p1"))
    before = files.cert.read_bytes()
    with pytest.raises(certs.CertsError, match="--overwrite"):
        certs.issue(tmp_path, Identity(Kind.PRODUCER, "p1"))
    assert files.cert.read_bytes() == before
    certs.issue(tmp_path, Identity(Kind.PRODUCER, "p1"), overwrite=True)
    assert files.cert.read_bytes() != before
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_the_cli_makes_a_dev_pki_and_explains_bad_input_in_one_line(tmp_path: Path) -> None:
    def leasenet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "leasenet", "certs", *args], capture_output=True, text=True,
                              timeout=60)

    made = leasenet("dev", "--tls-dir", str(tmp_path), "--producer-id", "p1", "--producer-id", "p2", "--registry-id", "r1")
    assert made.returncode == 0, made.stderr
    assert {p.name for p in tmp_path.glob("*.crt")} == {"ca.crt", "producer-p1.crt", "producer-p2.crt",
                                                       "registry-r1.crt", "etcd-leasenet.crt", "operator-admin.crt"}
    assert "LEASENET_TLS_DIR" in made.stdout
    bad = leasenet("create", "--tls-dir", str(tmp_path), "--kind", "consumer", "--id", "no/slashes")
    assert bad.returncode == 1 and bad.stderr.startswith("leasenet: ") and len(bad.stderr.splitlines()) == 1
    assert "not a valid consumer id" in bad.stderr
    listed = leasenet("list", "--tls-dir", str(tmp_path))
    assert "producer-p2.crt: CN=leasenet-producer" in listed.stdout
