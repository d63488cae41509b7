"""Open-ended streams: the stream handlers that last as long as their peer keeps them open
(a primary's Replicate link, a client's WatchShardMap, a caller's session), and their end
when the server stops (serving/bootstrap.py's Serving calls `serving_again` and `end_all`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

_open_ended: set[asyncio.Task[Any]] = set()  # handlers of this process's open-ended streams
_ending = False  # the server is stopping: an open-ended stream that starts now ends at once


@contextlib.contextmanager
def open_ended() -> Iterator[None]:
    """Around the body of a stream handler that lasts as long as its peer keeps the stream
    open: the server's stop ends it, as if it had returned (the peer sees the stream end with
    OK at once), instead of waiting out the grace. (A handler merely cancelled sends no
    status: its peer waited for its own timeout, and the server's stop with it.)"""
    task = asyncio.current_task()
    assert task is not None, "open_ended() outside a task"
    if _ending:
        task.cancel()  # the server stops: at the handler's first wait
    _open_ended.add(task)
    try:
        yield
    except asyncio.CancelledError:
        if not _ending:
            raise  # cancelled for another reason: not ours to swallow
        task.uncancel()
    finally:
        _open_ended.discard(task)


def serving_again() -> None:
    """The process serves (again: a test may start another server after one stopped)."""
    global _ending
    _ending = False


def end_all() -> None:
    """The server stops: end every open-ended stream, and those that open from now on."""
    global _ending
    _ending = True  # a peer whose stream ended opens another at once: that one ends too
    for task in list(_open_ended):
        task.cancel()
