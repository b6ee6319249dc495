"""The etcd key schema a process meets at start (ARCHITECTURE.md "Versions and compatibility").

etcd holds records of one key schema (mapping/keys.py ROOT, /leasenet/v<N>/), and says which in
its marker, `/leasenet/schema`, outside every schema's ROOT so that a process of any schema finds
it. The first registry writes it (only where none exists); every process reads it before it reads
or writes a record, and one of another schema refuses to start with one line naming both (it
would see a cluster it cannot read, or misread it). No marker: nothing to refuse (a host may start
before the first registry). A marker the process may not read (an etcd whose roles were
bootstrapped before the marker existed) is logged and passed: refusing would stop every upgrade
from such a release."""

from __future__ import annotations

import logging

from mapping import keys
from mapping.store import Store
from wire.errors import PermissionDenied, VersionMismatch
from wire.version import Speaks, schema_mismatch

log = logging.getLogger(__name__)


async def check(store: Store, speaks: Speaks, *, mark: bool = False) -> None:
    """Refuse (VersionMismatch) an etcd whose marker names another key schema than `speaks.keys`;
    `mark`: write ours where there is no marker yet (registries)."""
    try:
        if mark:
            await store.create_all([(keys.SCHEMA_KEY, keys.encode_schema(speaks.keys, speaks.release))])
        held = await store.get(keys.SCHEMA_KEY)
    except PermissionDenied as exc:
        log.warning("cannot check etcd's key schema (%s): %s; run `leasenet etcd-bootstrap` of this release on a "
                    "new etcd to have it checked", keys.SCHEMA_KEY, exc.message)
        return
    if held is None:
        return
    marker = keys.decode_schema(held.value)
    if marker is None:
        raise VersionMismatch(f"etcd's key schema marker {keys.SCHEMA_KEY} cannot be read ({held.value[:80]!r}): "
                              "refused rather than risk misreading the records")
    if (why := schema_mismatch(speaks, *marker)) is not None:
        raise VersionMismatch(why)
