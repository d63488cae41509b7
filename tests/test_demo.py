"""`make run`'s demo, whole: the ledger walk-through, then models trained, scoring, lending and
risk started, an application decided, a loan drawn and repaid, the borrower assessed, and a
partner's app running the journey through the gateway over HTTPS."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_walks_through_the_ledger_and_the_lending_business_and_stops(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "demo", "--exit", "--port", "0", "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "transfers: ['OK', 'OK', 'OK', 'OK', 'EXCEEDS_CREDITS']" in out
    assert "replayed drawdown-1: EXISTS (no money moved twice)" in out
    # The approval opens the credit line, and the loan is drawn on it at the decided price.
    decision = re.search(
        r"decision on app\d+: APPROVE, limit [\d,.]+ CNY at (\d+\.\d\d)% .*credit line (a[0-9a-f]{15}) opened in"
        r" the lending service: True",
        out,
    )
    assert decision is not None, out
    assert re.search(rf"loan d\d+: 30,000.00 CNY over 12 months at {re.escape(decision.group(1))}%", out), out
    assert re.search(r"repaid [\d,.]+ CNY on 2026-02-15", out), out
    assessed = re.search(
        r"behaviour as of 2026-02-20: (\w+) .*\"late_payments_12m\": 0.0, \"months_on_book\": 1.0", out
    )
    assert assessed is not None and assessed.group(1) in ("raise", "none", "warn"), out
    # The open platform: a partner's app runs the journey over HTTPS, and the sandbox is printed.
    assert re.search(r"partner demo\.a\d+: customer p\d+ onboarded; application APPROVE", out), out
    drawn = r"partner loan l\d+: 10,000.00 CNY drawn \(agreement [0-9a-f]{12}\.\.\.\), [\d,.]+ CNY repaid"
    assert re.search(drawn, out), out
    # Everything stopped: no process of the demo is left holding its data directory.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout == "", leftover.stdout
