"""The ledger node: slot actors, state machine, RocksDB storage, group commit."""
