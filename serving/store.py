"""An application server's own small RocksDB (the lending and risk stores), opened to write durably."""

from __future__ import annotations

import os

from rocksdict import Options, Rdict, WriteOptions


def open_store(data_dir: str, name: str) -> tuple[Rdict, WriteOptions]:
    """`<data_dir>/<name>` (raw bytes), and the write options that fsync before returning:
    what the lending and risk stores write with, so nothing they acknowledge is lost."""
    os.makedirs(data_dir, exist_ok=True)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    sync = WriteOptions()
    sync.sync = True
    return Rdict(os.path.join(data_dir, name), options), sync
