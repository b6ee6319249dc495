"""The pure half of TLS: identities and their URIs, which files a process uses, SANs, and reading
an identity from a certificate (no sockets; tests/security/ covers the real handshakes)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from leasenet import certs
from mapping.store.etcd import EtcdStore
from wire.rpc import split_addresses
from wire.tls import (
    Identity,
    Kind,
    TlsConfigError,
    TlsFiles,
    identity_of_certificate,
    peer_identity,
    resolve_files,
    server_name,
)

P1 = Identity(Kind.PRODUCER, "p1")


def test_an_identity_round_trips_through_its_spiffe_uri() -> None:
    assert P1.uri == "spiffe://leasenet/producer/p1"
    assert Identity.from_uri(P1.uri) == P1
    assert P1.file_stem == "producer-p1"
    assert server_name(Kind.REGISTRY) == "registry.leasenet"


@pytest.mark.parametrize("uri", ["spiffe://other/producer/p1", "spiffe://leasenet/admin/p1", "spiffe://leasenet/producer/",
                                 "spiffe://leasenet/producer/a/b", "https://leasenet/producer/p1"])
def test_uris_naming_no_leasenet_identity_give_none(uri: str) -> None:
    assert Identity.from_uri(uri) is None


@pytest.mark.parametrize("ident", ["", "-p1", "a/b", "a b", "x" * 64])
def test_ids_that_would_break_file_names_or_uris_are_refused_with_a_sentence(ident: str) -> None:
    with pytest.raises(ValueError, match="is not a valid producer id"):
        Identity(Kind.PRODUCER, ident)


def test_a_tls_dir_gives_the_conventional_files_and_explicit_flags_win(tmp_path: Path) -> None:
    assert resolve_files(P1, tls_dir=tmp_path) == TlsFiles(tmp_path / "ca.crt", tmp_path / "producer-p1.crt",
                                                          tmp_path / "producer-p1.key")
    chosen = resolve_files(P1, tls_dir=tmp_path, key="/secrets/p1.key")
    assert chosen is not None and chosen.key == Path("/secrets/p1.key") and chosen.ca == tmp_path / "ca.crt"
    assert resolve_files(P1, cert="c", key="k", ca="a") == TlsFiles(Path("a"), Path("c"), Path("k"))


def test_no_credentials_is_an_error_naming_insecure_and_insecure_means_plaintext() -> None:
    with pytest.raises(TlsConfigError, match="--insecure"):
        resolve_files(P1)
    assert resolve_files(P1, insecure=True) is None
    with pytest.raises(TlsConfigError, match="contradicts"):
        resolve_files(P1, insecure=True, tls_dir="d")
    with pytest.raises(TlsConfigError, match="--tls-key, --tls-ca missing"):
        resolve_files(P1, cert="c")


def test_missing_or_unreadable_files_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"the CA certificate .*ca.crt does not exist \(make it with"):
        TlsFiles.in_dir(tmp_path, P1).load()
    (tmp_path / "ca.crt").write_text("hello")
    with pytest.raises(TlsConfigError, match="is not PEM"):
        TlsFiles.in_dir(tmp_path, P1).load()


def test_san_arguments_are_ip_addresses_or_dns_names() -> None:
    assert certs.parse_san("10.0.0.5") == x509.IPAddress(ipaddress.ip_address("10.0.0.5"))
    assert certs.parse_san("etcd-1.local") == x509.DNSName("etcd-1.local")
    for bad in ["", "a..b", "under_score", "sp ace"]:
        with pytest.raises(certs.CertsError):
            certs.parse_san(bad)


def _signed(uris: list[str]) -> bytes:
    key = certs.new_key()
    now = dt.datetime.now(dt.UTC)
    ca = certs.Authority(certs.build_ca(key, now), key)
    name = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_naming_two_identities_or_none_names_nobody() -> None:
    assert identity_of_certificate(_signed([P1.uri])) == P1
    assert identity_of_certificate(_signed([P1.uri, "spiffe://leasenet/registry/r1"])) is None
    assert identity_of_certificate(_signed(["spiffe://elsewhere/producer/p1"])) is None
    assert identity_of_certificate(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n") is None


class FakeContext:
    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self.auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.auth


def test_peer_identity_reads_the_peer_certificate_and_is_none_without_one() -> None:
    pem = _signed([P1.uri])
    assert peer_identity(FakeContext({"x509_pem_cert": [pem], "transport_security_type": [b"ssl"]})) == P1
    assert peer_identity(FakeContext({})) is None
    before = identity_of_certificate.cache_info().hits
    peer_identity(FakeContext({"x509_pem_cert": [pem]}))
    assert identity_of_certificate.cache_info().hits == before + 1  # parsed once per certificate


def test_the_store_takes_https_endpoints_and_demands_credentials_for_them() -> None:
    assert split_addresses("https://10.0.0.1:2379, http://10.0.0.2:2379,10.0.0.3:2379", "etcd endpoint") == [
        "https://10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
    with pytest.raises(ValueError, match="not host:port or https://host:port"):
        split_addresses("https://10.0.0.1", "etcd endpoint")
    with pytest.raises(TlsConfigError, match="needs TLS credentials"):
        EtcdStore(["https://127.0.0.1:2379"])
