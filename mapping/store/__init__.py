from mapping.store.base import Compacted, KeyValue, Require, Snapshot, Store, TxnResult, WatchBatch, WatchEvent

__all__ = ["Compacted", "KeyValue", "Require", "Snapshot", "Store", "TxnResult", "WatchBatch", "WatchEvent"]
