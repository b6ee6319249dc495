"""The deployment's certificates as docker/make-certs.sh leaves them (build-images.sh runs it):
one directory per service holding that service's key only, keys private to the image's user,
and the CA's key mounted into no container."""

from __future__ import annotations

import pytest

from tests.docker.conftest import CERTS_DIR, ComposeProject

pytestmark = pytest.mark.docker

CONTAINER_USER = 10001  # the leasenet user of docker/Dockerfile


def test_every_service_directory_holds_its_own_key_only(leasenet_image):
    keys = {d.name: sorted(k.name for k in d.glob("*.key")) for d in CERTS_DIR.iterdir() if d.name != "ca"}
    assert keys["producer1"] == ["producer-producer1.key"]
    assert keys["etcd2"] == ["etcd-etcd2.key"]
    assert keys["operator"] == ["operator-admin.key"]
    assert all(len(names) == 1 for names in keys.values()), keys
    assert all((CERTS_DIR / service / "ca.crt").is_file() for service in keys)


def test_keys_are_private_to_the_container_user(leasenet_image):
    service_keys = [k for k in CERTS_DIR.glob("*/*.key") if k.parent.name != "ca"]
    assert service_keys
    modes = {str(k.relative_to(CERTS_DIR)): (k.stat().st_mode & 0o777, k.stat().st_uid) for k in service_keys}
    assert set(modes.values()) == {(0o600, CONTAINER_USER)}, modes
    assert (CERTS_DIR / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600


def test_the_ca_key_is_mounted_into_no_container(docker_engine, leasenet_image):
    config = ComposeProject().compose("config", timeout=60).stdout
    assert f"{CERTS_DIR}/" in config  # the services' directories are mounted...
    assert f"{CERTS_DIR / 'ca'}" not in config  # ...and the CA's is not
