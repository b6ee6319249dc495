"""The etcd store builds its transactions in place (mapping/store/etcd.py): the very request etcd3aio's
own helpers would build, so that etcd's semantics stay exactly what they were (the contract suite
runs them against etcd)."""

from __future__ import annotations

from etcd3aio._protobuf import TxnRequest
from etcd3aio.kv import KVService

from mapping.store.base import Require
from mapping.store.etcd import _txn_request


def test_a_grant_s_transaction_is_the_one_etcd3aio_s_helpers_build() -> None:
    items = [("/k/pool", b'{"a":1}'), ("/k/claim", b'{"b":2}')]
    mirrors = [("/k/pool/member", b'{"b":2}')]
    require = [Require("/k/vm", 17), Require("/k/host", 5)]
    theirs = TxnRequest(
        compare=[*(KVService.txn_compare_create_revision(k, 0) for k, _ in items),
                 *(KVService.txn_compare_create_revision(r.key, r.create_revision) for r in require)],
        success=[KVService.txn_op_put(k, v, lease=42) for k, v in [*items, *mirrors]])
    ours = _txn_request(require, absent=[k for k, _ in items], puts=[*items, *mirrors], lease=42)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


def test_a_release_s_transaction_is_the_one_etcd3aio_s_helpers_build() -> None:
    doomed = ["/k/claim", "/k/pool/member", "/k/pool"]
    require = [Require("/k/pool", 9)]
    theirs = TxnRequest(compare=[KVService.txn_compare_create_revision("/k/pool", 9)],
                        success=[KVService.txn_op_delete(k) for k in doomed])
    ours = _txn_request(require, deletes=doomed)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
