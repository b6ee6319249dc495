from mapping.store.base import (MAX_TXN_OPS, SNAPSHOT_PAGE_KEYS, BacklogTooLarge, Compacted, KeyValue, Page, Require,
                                Snapshot, Store, TxnResult, WatchBatch, WatchEvent, check_txn_size)

__all__ = ["BacklogTooLarge", "Compacted", "KeyValue", "Page", "Require", "SNAPSHOT_PAGE_KEYS", "Snapshot", "Store",
           "TxnResult", "WatchBatch", "WatchEvent"]
