"""An application server's own small RocksDB (the lending and risk stores), opened to write durably."""

from __future__ import annotations

import os

from rocksdict import Options, Rdict, WriteOptions

from serving.files import private_dir


def open_store(data_dir: str, name: str) -> tuple[Rdict, WriteOptions]:
    """`<data_dir>/<name>` (raw bytes), and the write options that fsync before returning:
    what the lending and risk stores write with, so nothing they acknowledge is lost."""
    private_dir(data_dir)
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    sync = WriteOptions()
    sync.sync = True
    return Rdict(os.path.join(data_dir, name), options), sync
