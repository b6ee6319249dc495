"""Probes the docker tests run INSIDE a container of the deployment (mounted at /probe.py, run with
the image's python), each printing one JSON object on stdout:

    python /probe.py connect HOST:PORT ...
        {"HOST:PORT": "connected" | "<why not>"}: a plain TCP connect, 3 s each, all at once (a
        name docker's DNS does not know takes ~20 s to fail on an internal network)
    python /probe.py etcd KIND/ID ENDPOINTS put:KEY|get:KEY ...
        {"put:KEY": "ok" | "denied" | "<error>"}: one etcd request each over mutual TLS with the
        certificate of KIND/ID in /etc/leasenet-tls (its CN is the etcd user of its kind)
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

from etcd3aio import EtcdError, EtcdPermissionDeniedError

from leasenet.etcd import etcd_client
from wire.rpc import split_addresses
from wire.tls import Identity, Kind, TlsFiles

TLS_DIR = "/etc/leasenet-tls"


def connect(address: str) -> str:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


async def etcd(identity: str, endpoints: str, requests: list[str]) -> dict[str, str]:
    kind, _, ident = identity.partition("/")
    client = etcd_client(split_addresses(endpoints, "etcd endpoint"),
                         TlsFiles.in_dir(TLS_DIR, Identity(Kind(kind), ident)).load())
    await client.connect()
    assert client.kv is not None
    results = {}
    try:
        for request in requests:
            op, _, key = request.partition(":")
            try:
                await (client.kv.put(key, "probe") if op == "put" else client.kv.get(key))
                results[request] = "ok"
            except EtcdPermissionDeniedError:
                results[request] = "denied"
            except EtcdError as exc:
                results[request] = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return results


def main(argv: list[str]) -> dict[str, str]:
    if argv[0] == "connect":
        with ThreadPoolExecutor(len(argv) - 1) as pool:
            return dict(zip(argv[1:], pool.map(connect, argv[1:])))
    if argv[0] == "etcd":
        return asyncio.run(etcd(argv[1], argv[2], argv[3:]))
    raise SystemExit(f"unknown probe {argv[0]!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
