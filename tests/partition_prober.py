"""A caller on the partitioned side (tests/test_partition.py runs it inside the node's network namespace).

    python -m tests.partition_prober SPEC OUT

SPEC is JSON: {"node": HOST:PORT, "read": {"account", "slot", "epoch"}, "write": {"debit",
"credit", "slot", "epoch"}}. The prober talks straight to that node, fenced at each slot's
epoch as it knew it, until SIGTERM: every READ_EVERY_S a LookupAccounts of the read account and,
independently, every WRITE_EVERY_S a transfer of 1 between the write accounts with a fresh id. The two are
on different slots, so that reads meet the lease alone (a write waiting for its followers
holds the reads of its own slot). Each call becomes one JSON line in OUT (flushed at once):
when it was sent and answered (time.time(), the same clock as the test's on this host), the
answer's code, and for reads the debits posted, for writes the transfer id.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import grpc

from proto import ledger_pb2 as pb, ledger_pb2_grpc
from tests.conftest import channel

READ_EVERY_S = 0.02
WRITE_EVERY_S = 0.1
CALL_TIMEOUT_S = 1.0
CNY = 156


def main(argv: list[str]) -> int:
    spec_text, out = argv
    spec = json.loads(spec_text)
    read, write = spec["read"], spec["write"]
    read_fence = pb.Fence(slots=[read["slot"]], epochs=[read["epoch"]])
    write_fence = pb.Fence(slots=[write["slot"]], epochs=[write["epoch"]])
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    lock = threading.Lock()
    # Fenced calls are a router's: the prober presents the router's certificate.
    with channel(spec["node"], "router") as to_node, open(out, "a", encoding="utf-8") as sink:
        stub = ledger_pb2_grpc.LedgerStub(to_node)

        def record(line: dict[str, Any]) -> None:
            with lock:
                sink.write(json.dumps(line) + "\n")
                sink.flush()

        def reads() -> None:
            while not stopping.wait(READ_EVERY_S):
                sent = time.time()
                request = pb.LookupAccountsRequest(ids=[read["account"]], fence=read_fence)
                try:
                    result = stub.LookupAccounts(request, timeout=CALL_TIMEOUT_S).results[0]
                    code, debits = pb.ResultCode.Name(result.code), result.account.debits_posted
                except grpc.RpcError as error:
                    code, debits = error.code().name, None
                record({"kind": "read", "sent": sent, "answered": time.time(), "code": code, "debits_posted": debits})

        def writes() -> None:
            count = 0
            while not stopping.wait(WRITE_EVERY_S):
                count += 1
                transfer = pb.Transfer(
                    id=f"probe-{count}",
                    debit_account_id=write["debit"],
                    credit_account_id=write["credit"],
                    amount=1,
                    ledger=CNY,
                    code=1,
                )
                sent = time.time()
                request = pb.CreateTransfersRequest(transfers=[transfer], fence=write_fence)
                try:
                    code = pb.ResultCode.Name(stub.CreateTransfers(request, timeout=CALL_TIMEOUT_S).results[0].code)
                except grpc.RpcError as error:
                    code = error.code().name
                record({"kind": "write", "sent": sent, "answered": time.time(), "code": code, "id": transfer.id})

        workers = [threading.Thread(target=reads), threading.Thread(target=writes)]
        for worker in workers:
            worker.start()
        while not stopping.wait(0.1):
            pass
        for worker in workers:
            worker.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
