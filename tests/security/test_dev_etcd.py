"""`leasenet etcd --tls-dir D`: the dev etcd makes its certificate (and the CA) when absent, serves
mutual TLS only, bootstraps auth on first start, and stops its etcd on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from leasenet import certs
from leasenet.etcd import free_port
from mapping import keys
from mapping.store.etcd import EtcdStore
from tests.conftest import eventually
from wire.errors import PermissionDenied
from wire.tls import Identity, Kind, TlsFiles


def test_the_dev_etcd_runs_with_tls_and_auth_and_stops_on_sigterm(tmp_path: Path) -> None:
    tls_dir, log = tmp_path / "tls", tmp_path / "etcd.log"
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "leasenet", "etcd", "--tls-dir", str(tls_dir),
                                    "--data-dir", str(tmp_path / "data"), "--client-port", str(port),
                                    "--peer-port", str(free_port())], stdout=out, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: "etcd serving on https://" in log.read_text() or process.poll() is not None, 60,
                   what="the dev etcd serving")
        assert process.poll() is None, log.read_text()
        assert "auth enabled" in log.read_text()
        assert (tls_dir / "ca.crt").exists() and (tls_dir / "etcd-leasenet.key").exists()

        producer = Identity(Kind.PRODUCER, "p1")
        certs.make_dev(tls_dir, [producer])  # later certificates come from the CA it made

        async def writes() -> None:
            store = await EtcdStore([f"https://127.0.0.1:{port}"], tls=TlsFiles.in_dir(tls_dir, producer).load()).connect()
            try:
                await store.put(keys.VMS + "blue/10.1.1.1", b"{}")
                with pytest.raises(PermissionDenied):
                    await store.put(keys.CLAIMS + "blue/10.1.1.1", b"{}")
            finally:
                await store.close()

        asyncio.run(writes())
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()
    pids = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
    assert pids == []  # its etcd went with it


def test_insecure_and_a_tls_dir_together_are_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "leasenet", "etcd", "--insecure", "--tls-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "leasenet: --insecure contradicts --tls-dir: give one of them\n"
