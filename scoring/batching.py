"""Dynamic batching: concurrent ModelInfer calls to one model version share one onnxruntime run.

A call whose features were already checked joins the open batch of its version (or opens one).
The batch runs `delay_s` after it opened (0: on the event loop's next turn, so only calls that
arrived together are joined and a lone call waits for nothing), or at once when it holds
`rows_max` rows. Each caller gets back exactly its own rows' scores. Batches are keyed by the
loaded version object, so a hot reload never mixes rows of two models: a batch opened before
the swap runs on the session it was opened for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scoring.service import LoadedVersion

DELAY_S_MAX = 0.001  # the most a call may wait for company
ROWS_MAX_DEFAULT = 4096


@dataclass
class _Batch:
    model: LoadedVersion
    opened_s: float
    rows: int = 0
    parts: list[tuple[npt.NDArray[np.float32], asyncio.Future[npt.NDArray[np.float32]]]] = field(default_factory=list)


# Called after each run with (model, rows, waited_s, compute_s): the server's metrics.
Observer = Callable[[LoadedVersion, int, float, float], None]


class Batcher:
    def __init__(self, delay_s: float, rows_max: int = ROWS_MAX_DEFAULT, observe: Observer | None = None) -> None:
        assert 0.0 <= delay_s <= DELAY_S_MAX, f"batch delay {delay_s}s is outside [0, {DELAY_S_MAX}]"
        assert rows_max >= 1
        self.delay_s = delay_s
        self.rows_max = rows_max
        self.observe = observe
        self.open: dict[int, _Batch] = {}

    async def score(self, model: LoadedVersion, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[npt.NDArray[np.float32]] = loop.create_future()
        batch = self.open.get(id(model))
        if batch is not None and batch.rows + len(features) > self.rows_max:
            self._run(id(model))
            batch = None
        if batch is None:
            batch = _Batch(model, time.perf_counter())
            self.open[id(model)] = batch
            if self.delay_s > 0:
                loop.call_later(self.delay_s, self._run_if_open, id(model), batch)
            else:
                loop.call_soon(self._run_if_open, id(model), batch)
        batch.parts.append((features, future))
        batch.rows += len(features)
        if batch.rows >= self.rows_max:
            self._run(id(model))
        return await future

    def _run_if_open(self, key: int, batch: _Batch) -> None:
        # The timer of a batch that already ran (full) must not run its successor early... or twice.
        if self.open.get(key) is batch:
            self._run(key)

    def _run(self, key: int) -> None:
        batch = self.open.pop(key)
        started = time.perf_counter()
        block = batch.parts[0][0] if len(batch.parts) == 1 else np.concatenate([p for p, _ in batch.parts])
        try:
            scores = batch.model.score(block)
        except Exception as error:  # every caller of the batch hears of it; none hangs
            for _, future in batch.parts:
                if not future.done():
                    future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(batch.model, batch.rows, started - batch.opened_s, time.perf_counter() - started)
        offset = 0
        for part, future in batch.parts:
            if not future.done():  # a cancelled caller (deadline passed) no longer wants its rows
                future.set_result(scores[offset : offset + len(part)])
            offset += len(part)
        assert offset == len(scores)
