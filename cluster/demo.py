"""`yunkai demo` (what `make run` starts): a local cluster and a short walk through the ledger.

It starts a router and three nodes on loopback, then, through the SDK: opens a customer's
deposit and loan accounts (one slot, by their hash tag) and a bank fee account (another
slot, often on another node), draws the loan down into the deposit, reserves and posts a
two-phase repayment, charges a fee across nodes (the durable outbox), shows a refused
overdraft and an idempotent replay, prints balances and history, and leaves the cluster
serving for you to call until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from clients.ledger import (
    Account,
    AccountFlags,
    LedgerClient,
    Transfer,
    TransferFlags,
)
from cluster.commands import LocalCluster

CNY = 156  # ISO 4217 numeric code, used as the ledger (book) number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="keep the cluster's data here (default: a new temporary directory)")
    parser.add_argument("--port", type=int, default=7000, help="router port; nodes take the next 3 (default 7000)")
    parser.add_argument("--exit", action="store_true", help="stop the cluster after the walk-through")


def _fen(amount: int) -> str:
    return f"{amount / 100:,.2f} CNY"


def main(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="yunkai-demo-")
    cluster = LocalCluster(data_dir, nodes=3, port=args.port)
    print(f"starting a router and 3 ledger nodes (data in {data_dir}) ...")
    cluster.start()
    try:
        print(f"router serving on {cluster.address}; nodes on {', '.join(n.address for n in cluster.nodes)}\n")
        asyncio.run(_walk_through(cluster.address))
        if args.exit:
            return 0
        print(f"\nThe cluster keeps serving; the router is {cluster.address}. Ctrl-C stops it.")
        print(f"Try: yunkai cluster status --router {cluster.address}")
        while all(p.process is not None and p.process.poll() is None for p in [cluster.router, *cluster.nodes] if p):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


async def _walk_through(router: str) -> None:
    run = str(time.time_ns())  # fresh ids per run, so the demo can be repeated on one cluster
    deposit, loan, fees = f"{{c42:{run}}}:deposit", f"{{c42:{run}}}:loan", f"bank:fees:{run}"
    async with await LedgerClient.connect(router) as ledger:
        opened = await ledger.create_accounts(
            [
                Account(deposit, ledger=CNY, code=2001, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
                Account(loan, ledger=CNY, code=1301),
                Account(fees, ledger=CNY, code=6021),
            ]
        )
        print("open accounts:", [r.code.name for r in opened])
        moved = await ledger.create_transfers(
            [
                Transfer("drawdown-1", loan, deposit, amount=500_000, ledger=CNY, code=1),
                Transfer("repay-1", deposit, loan, 120_000, CNY, 2, flags=TransferFlags.PENDING, timeout_s=3600),
                Transfer("repay-1-post", deposit, pending_id="repay-1", flags=TransferFlags.POST_PENDING),
                Transfer("fee-1", deposit, fees, amount=1_500, ledger=CNY, code=3),
                Transfer("too-much", deposit, loan, amount=10_000_000, ledger=CNY, code=2),
            ]
        )
        print("transfers:", [r.code.name for r in moved])
        [replay] = await ledger.create_transfers([Transfer("drawdown-1", loan, deposit, 500_000, CNY, 1)])
        print("replayed drawdown-1:", replay.code.name, "(no money moved twice)")
        for account in await ledger.lookup_accounts([deposit, loan, fees]):
            assert account is not None
            credits, debits = _fen(account.credits_posted), _fen(account.debits_posted)
            print(f"  {account.id:40} credits {credits:>16}  debits {debits:>16}")
        page = await ledger.get_account_transfers(deposit, newest_first=True)
        print(f"history of {deposit}, newest first:")
        for t in page.transfers:
            print(f"  {t.id:12} {t.state.name:10} {_fen(t.amount):>16}")
