"""Shared fixtures. Integration tests run real processes: each test gets its own etcd (a fresh
keyspace) and its own leasenet processes, all stopped at the end, with logs kept on failure."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import settings

from leasenet import certs
from leasenet.cluster import LocalCluster
from leasenet.etcd import EtcdCluster
from wire.tls import Identity, TlsFiles, TlsMaterial

# No timing in tests (speed belongs in `leasenet bench`): hypothesis's per-example deadline would
# fail a property on a loaded 2-core machine, not on a wrong answer.
settings.register_profile("leasenet", deadline=None)
settings.load_profile("leasenet")

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05, what: str = "") -> T:
    """Poll `check` until it returns something truthy (or stops raising AssertionError); for a
    test without a running event loop (inside one, await eventually_async)."""
    return asyncio.run(eventually_async(check, timeout_s, interval_s, what))


async def eventually_async(check: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0, interval_s: float = 0.05,
                           what: str = "") -> T:
    """eventually() inside a running event loop, which keeps running meanwhile (the test's own
    requests go on); `check` may be a coroutine function (a gRPC call) or a plain one."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {what or check} (last: {last})")
        await asyncio.sleep(interval_s)


@functools.cache
def session_pki() -> Path:
    """One CA for every test cluster of the session, so a helper dials any of them by address alone."""
    return Path(tempfile.mkdtemp(prefix="leasenet-pki-"))


@functools.cache
def tls_as(identity: Identity) -> TlsMaterial:
    """`identity`'s certificate from the session's CA (made on first use)."""
    certs.make_dev(session_pki(), [identity])
    return TlsFiles.in_dir(session_pki(), identity).load()


@pytest.fixture(scope="session")
def etcd_endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A real etcd for the whole session (contract tests): LEASENET_ETCD_ENDPOINTS or our own."""
    if os.environ.get("LEASENET_ETCD_ENDPOINTS"):
        yield os.environ["LEASENET_ETCD_ENDPOINTS"].split(",")
        return
    etcd = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield etcd.endpoints
    finally:
        etcd.stop()


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A LocalCluster with its own fresh etcd, mutual TLS and etcd auth (certificates from the session's
    CA); process logs are printed if the test fails."""
    workdir = Path(tempfile.mkdtemp(prefix=f"leasenet-{request.node.name[:40]}-"))
    c = LocalCluster(workdir, tls_dir=session_pki())
    c.env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    c.start_etcd()
    try:
        yield c
    finally:
        close_cluster(c, request)


def close_cluster(c: LocalCluster, request: pytest.FixtureRequest) -> None:
    """Stop `c`; print its processes' logs if the test failed and keep its work dir for a look, else
    delete it (each holds an etcd data dir of ~60 MB: a kept one per test filled a disk)."""
    c.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for proc in c.procs.values():
            print(f"\n===== {proc.name} log =====\n{proc.log_tail(40)}")
        print(f"\n(work dir kept: {c.workdir})")
    else:
        shutil.rmtree(c.workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
