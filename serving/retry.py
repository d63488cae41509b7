"""The one retry pause every yunkai client of another process uses: exponential, capped, jittered.

Each pause is drawn uniformly from [d/2, d] where d = min(max_s, first_s * 2**attempt):
"equal jitter" in Marc Brooker's comparison of backoff schemes (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015), which keeps a floor under each pause while
spreading callers that failed together.
"""

from __future__ import annotations

import random

_EXPONENT_MAX = 30  # 2**30 times any sane first pause is past every cap


def backoff_s(attempt: int, first_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """The pause before retry `attempt` (0 for the first retry)."""
    assert attempt >= 0 and 0 < first_s <= max_s, (attempt, first_s, max_s)
    ceiling: float = min(max_s, first_s * float(2 ** min(attempt, _EXPONENT_MAX)))
    jitter: float = (rng or random).uniform(0.5, 1.0)
    return ceiling * jitter
