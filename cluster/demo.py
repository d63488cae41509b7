"""`yunkai demo` (what `make run` starts): a local node and a short walk through the ledger.

It starts a node on loopback, opens a customer's deposit account and the bank's funding
account, funds the deposit, reserves and posts a two-phase payment, prints balances and
history, and leaves the node serving for you to call until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import grpc

from cluster.local import NodeProcess
from proto import ledger_pb2 as pb
from proto import ledger_pb2_grpc

CNY = 156  # ISO 4217 numeric code, used as the ledger (book) number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="keep the node's data here (default: a new temporary directory)")
    parser.add_argument("--port", type=int, default=7001, help="node port (default 7001; 0 picks one)")
    parser.add_argument("--exit", action="store_true", help="stop the node after the walk-through")


def _fen(amount: int) -> str:
    return f"{amount / 100:,.2f} CNY"


def main(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="yunkai-demo-")
    node = NodeProcess(os.path.join(data_dir, "node-1"))
    node.port = args.port
    print(f"starting a ledger node (data in {node.data_dir}) ...")
    node.start()
    try:
        print(f"node serving on {node.address}\n")
        _walk_through(node.address)
        if args.exit:
            return 0
        print(f"\nThe node keeps serving on {node.address}; Ctrl-C stops it.")
        print("Call it with the stubs in proto/ledger_pb2_grpc.py, or grpcurl (reflection is on).")
        while node.process is not None and node.process.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        node.stop()


def _walk_through(address: str) -> None:
    run = str(time.time_ns())  # fresh ids per run, so the demo can be repeated on one node
    deposit, funding = f"{{c42}}:deposit:{run}", f"bank:funding:{run}"
    with grpc.insecure_channel(address) as channel:
        ledger = ledger_pb2_grpc.LedgerStub(channel)
        opened = ledger.CreateAccounts(
            pb.CreateAccountsRequest(
                accounts=[
                    pb.Account(id=deposit, ledger=CNY, code=2001, flags=pb.DEBITS_MUST_NOT_EXCEED_CREDITS),
                    pb.Account(id=funding, ledger=CNY, code=1001),
                ]
            )
        )
        print("CreateAccounts:", [pb.ResultCode.Name(r.code) for r in opened.results])
        moved = ledger.CreateTransfers(
            pb.CreateTransfersRequest(
                transfers=[
                    pb.Transfer(
                        id="fund-1",
                        debit_account_id=funding,
                        credit_account_id=deposit,
                        amount=500_000,
                        ledger=CNY,
                        code=1,
                    ),
                    pb.Transfer(
                        id="pay-1",
                        debit_account_id=deposit,
                        credit_account_id=funding,
                        amount=120_000,
                        ledger=CNY,
                        code=2,
                        flags=pb.PENDING,
                        timeout_s=3600,
                    ),
                    pb.Transfer(id="pay-1-post", debit_account_id=deposit, pending_id="pay-1", flags=pb.POST_PENDING),
                    pb.Transfer(
                        id="too-much",
                        debit_account_id=deposit,
                        credit_account_id=funding,
                        amount=10_000_000,
                        ledger=CNY,
                        code=2,
                    ),
                ]
            )
        )
        print("CreateTransfers:", [pb.ResultCode.Name(r.code) for r in moved.results])
        replay = ledger.CreateTransfers(
            pb.CreateTransfersRequest(
                transfers=[
                    pb.Transfer(
                        id="fund-1",
                        debit_account_id=funding,
                        credit_account_id=deposit,
                        amount=500_000,
                        ledger=CNY,
                        code=1,
                    )
                ]
            )
        )
        print("replayed fund-1:", pb.ResultCode.Name(replay.results[0].code), "(no money moved twice)")
        looked = ledger.LookupAccounts(pb.LookupAccountsRequest(ids=[deposit, funding]))
        for result in looked.results:
            a = result.account
            print(f"  {a.id:40} credits {_fen(a.credits_posted):>16}  debits {_fen(a.debits_posted):>16}")
        history = ledger.GetAccountTransfers(pb.GetAccountTransfersRequest(account_id=deposit, newest_first=True))
        print(f"history of {deposit}, newest first:")
        for t in history.transfers:
            print(f"  {t.id:12} {pb.TransferState.Name(t.state):18} {_fen(t.amount):>16}")
