"""`leasenet etcd --tls-dir D`: the dev etcd makes its certificate (and the CA) when absent, serves
mutual TLS only, bootstraps auth on first start, and stops its etcd on SIGTERM; `leasenet enrol`
lets a host in (its own records only) and `leasenet decommission` shuts it out."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
        endpoint = f"https://127.0.0.1:{port}"
        enrolled = leasenet("enrol", "--kind", "producer", "--id", "p1", "--tls-dir", str(tls_dir),
                            "--etcd-endpoints", endpoint)  # its certificate from the CA etcd made, and its role
        assert enrolled.stdout.splitlines()[-1] == ("enrolled producer/p1: etcd user leasenet-producer-p1, "
                                                    "writing its own records only"), enrolled
        own, other = keys.VMS + "p1/blue/10.1.1.1", keys.VMS + "p2/blue/10.1.1.2"

        async def writes(allowed: bool) -> None:
            store = await EtcdStore([endpoint], tls=TlsFiles.in_dir(tls_dir, producer).load()).connect()
            try:
                if allowed:
                    await store.put(own, b'{"host_id":"p1","service":"echo"}')
                for key in ([] if allowed else [own]) + [other, keys.CLAIMS + "blue/10.1.1.1"]:
                    with pytest.raises(PermissionDenied):
                        await store.put(key, b"{}")
            finally:
                await store.close()

        asyncio.run(writes(allowed=True))
        gone = leasenet("decommission", "--kind", "producer", "--id", "p1", "--tls-dir", str(tls_dir),
                        "--etcd-endpoints", endpoint)
        assert gone.stdout.splitlines()[-1] == ("decommissioned producer/p1: etcd user leasenet-producer-p1 deleted "
                                                "(its certificate reaches nothing in etcd any more), 1 record(s) "
                                                "deleted"), gone
        asyncio.run(writes(allowed=False))
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, log.read_text()
    pids = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout.split()
    assert pids == []  # its etcd went with it


def leasenet(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "leasenet", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done
    return done


def test_insecure_and_a_tls_dir_together_are_refused_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "leasenet", "etcd", "--insecure", "--tls-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "leasenet: --insecure contradicts --tls-dir: give one of them\n"
