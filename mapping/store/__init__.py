from mapping.store.base import (MAX_TXN_OPS, Compacted, KeyValue, Require, Snapshot, Store, TxnResult, WatchBatch,
                                WatchEvent, check_txn_size)

__all__ = ["Compacted", "KeyValue", "Require", "Snapshot", "Store", "TxnResult", "WatchBatch", "WatchEvent"]
