"""`yunkai loan ...`, `yunkai eod run` and `yunkai gl report`: operator commands over gRPC to LoanService.

    yunkai loan approve --customer C --line L --product P --customer-limit FEN --product-limit FEN [--rate BPS]
    yunkai loan draw --customer C --loan ID --product P --amount FEN --date D [--rate BPS] [--term M] [--day N]
    yunkai loan show ID [--json]           yunkai loan list --customer C [--json]
    yunkai loan repay ID --id R --amount FEN --date D
    yunkai loan payoff ID --id R --date D  yunkai loan write-off ID --date D
    yunkai eod run --lending HOST:PORT [--date D]     # slot by slot, with progress; resumable
    yunkai gl report --lending HOST:PORT [--as-of DATE] [--json]   # the trial balance, now or as of a date
    yunkai gl journal --lending HOST:PORT [--from D] [--to D]       # the dated journal
    yunkai gl provision --date D / yunkai gl close --date D         # loan-loss allowance; close a period

Each prints what the server answered as JSON (tables for eod and gl); a refusal prints the
server's reason (which names the field) on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from typing import TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

import serving
from proto import lending_pb2 as pb, lending_pb2_grpc

M = TypeVar("M", bound=Message)

SERVER_DEFAULT = "127.0.0.1:7300"
TIMEOUT_S = 30.0
EOD_SLOT_TIMEOUT_S = 300.0  # one slot's loans, each a few ledger calls


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, lending_pb2_grpc.LoanServiceStub]:
    channel = serving.sync_channel(args.lending, serving.client_tls(args, "operator"))
    return channel, lending_pb2_grpc.LoanServiceStub(channel)


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lending", "--server", default=SERVER_DEFAULT, help=f"HOST:PORT of yunkai lending (default {SERVER_DEFAULT})"
    )
    serving.add_tls_arguments(parser)


def _print(message: Message) -> None:
    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
    print(json.dumps(as_dict, indent=2, ensure_ascii=False))


def _refused(command: str, error: grpc.RpcError) -> int:
    print(f"yunkai {command}: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1


def add_loan_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="loan_action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        _server_arguments(sub)
        sub.set_defaults(run=loan_main)
        return sub

    approve = action("approve", "approve a credit line: raise the customer's limit and the product's sub-limit")
    approve.add_argument("--customer", required=True)
    approve.add_argument("--line", required=True, help="the line's id (retries with it change nothing)")
    approve.add_argument("--product", required=True)
    approve.add_argument("--version", type=int, default=0, help="product version to pin (default: newest published)")
    approve.add_argument("--customer-limit", type=int, required=True, help="fen")
    approve.add_argument("--product-limit", type=int, required=True, help="fen")
    approve.add_argument(
        "--rate", type=int, default=0, help="the line's price: annual bps within the product's bounds (default: its)"
    )

    draw = action("draw", "draw a loan down under the customer's credit line")
    draw.add_argument("--customer", required=True)
    draw.add_argument("--loan", required=True, help="the loan's id (retries with it change nothing)")
    draw.add_argument("--product", required=True)
    draw.add_argument("--amount", type=int, required=True, help="fen")
    draw.add_argument("--date", default=date.today().isoformat())
    draw.add_argument(
        "--rate", type=int, default=0, help="annual bps, if the product lets a loan choose (default: the line's price)"
    )
    draw.add_argument("--term", type=int, default=0, help="months, if the product lets a loan choose")
    draw.add_argument("--day", type=int, default=0, help="repayment day of the month (default: the drawdown's)")

    show = action("show", "print a loan, its schedule and its repayments")
    show.add_argument("loan")
    listing = action("list", "print a customer's loans")
    listing.add_argument("--customer", required=True)

    for name, help_text in (("repay", "repay: fees, penalty, interest, principal"), ("payoff", "repay in full")):
        sub = action(name, help_text)
        sub.add_argument("loan")
        sub.add_argument("--id", required=True, help="the repayment's id (retries with it change nothing)")
        if name == "repay":
            sub.add_argument("--amount", type=int, required=True, help="fen")
        sub.add_argument("--date", default=date.today().isoformat())

    write_off = action("write-off", "write an overdue loan off")
    write_off.add_argument("loan")
    write_off.add_argument("--date", default=date.today().isoformat())


def loan_main(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    reply: Message
    with channel:
        try:
            if args.loan_action == "approve":
                reply = stub.ApproveCreditLine(
                    pb.ApproveCreditLineRequest(
                        customer=args.customer,
                        line_id=args.line,
                        product_code=args.product,
                        product_version=args.version,
                        customer_limit=args.customer_limit,
                        product_limit=args.product_limit,
                        annual_rate_bps=args.rate,
                    ),
                    timeout=TIMEOUT_S,
                )
            elif args.loan_action == "draw":
                reply = stub.Drawdown(
                    pb.DrawdownRequest(
                        customer=args.customer,
                        loan_id=args.loan,
                        product_code=args.product,
                        amount=args.amount,
                        date=args.date,
                        annual_rate_bps=args.rate,
                        term_months=args.term,
                        repayment_day=args.day,
                    ),
                    timeout=TIMEOUT_S,
                )
            elif args.loan_action == "show":
                reply = stub.GetLoan(pb.LoanRef(loan_id=args.loan), timeout=TIMEOUT_S)
            elif args.loan_action == "list":
                reply = stub.ListLoans(pb.ListLoansRequest(customer=args.customer), timeout=TIMEOUT_S)
            elif args.loan_action == "repay":
                request = pb.RepayRequest(loan_id=args.loan, repayment_id=args.id, amount=args.amount, date=args.date)
                reply = stub.Repay(request, timeout=TIMEOUT_S)
            elif args.loan_action == "payoff":
                reply = stub.PayOff(
                    pb.RepayRequest(loan_id=args.loan, repayment_id=args.id, date=args.date), timeout=TIMEOUT_S
                )
            else:
                reply = stub.WriteOff(pb.WriteOffRequest(loan_id=args.loan, date=args.date), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return _refused(f"loan {args.loan_action}", error)
    _print(reply)
    return 0


def add_eod_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="eod_action", required=True, metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="run end of day for a business date, slot by slot",
        description="Accrue each open loan's interest, charge penalty, classify overdue buckets, slot by slot. "
        "A slot done for the date is skipped (its checkpoint is durable), so a second run changes nothing and "
        "an interrupted run resumes.",
    )
    _server_arguments(run)
    run.add_argument("--date", default=date.today().isoformat(), help="business date YYYY-MM-DD (default today)")
    run.set_defaults(run=eod_main)


def eod_main(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        try:
            plan = stub.PlanEod(pb.EodSlotsRequest(date=args.date), timeout=TIMEOUT_S)
            done = set(plan.slots_done)
            print(f"end of day {plan.date}: {len(plan.slots)} slots with loans, {len(done)} done before", flush=True)
            loans = transfers = 0
            for index, slot in enumerate(plan.slots, 1):
                if slot in done:
                    continue
                result = stub.RunEodSlot(pb.EodSlotRequest(date=plan.date, slot=slot), timeout=EOD_SLOT_TIMEOUT_S)
                loans += result.loans
                transfers += result.transfers
                print(
                    f"  slot {slot:>5}  [{index}/{len(plan.slots)}]  "
                    f"loans {result.loans:>5}  transfers {result.transfers:>5}",
                    flush=True,
                )
        except grpc.RpcError as error:
            return _refused("eod run", error)
    print(f"end of day {plan.date} done: {loans} loans, {transfers} transfers")
    return 0


def add_gl_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="gl_action", required=True, metavar="ACTION")
    report = actions.add_parser(
        "report",
        help="the general ledger's trial balance: now, or as of a business date",
        description="Without --as-of: read the balances of every customer, loan, clearing and provisioning "
        "account the lending server knows and map them to each product's GL codes. With --as-of DATE: the "
        "trial balance of the dated journal's entries through that business date (read from the ledger's "
        "history, lending/journal.py), with the stored close if that date was closed. Debits equal credits.",
    )
    _server_arguments(report)
    report.add_argument("--as-of", default="", help="business date YYYY-MM-DD (default: the balances now)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(run=gl_main)
    entries = actions.add_parser(
        "journal",
        help="the dated journal: debits and credits per business date and GL code",
        description="Every transfer of the lending server's accounts, booked on its business date (in its "
        "user_data) by GL code, aggregated per day.",
    )
    _server_arguments(entries)
    entries.add_argument("--from", dest="date_from", default="", help="first business date (default: the first)")
    entries.add_argument("--to", dest="date_to", default="", help="last business date (default: the last)")
    entries.add_argument("--json", action="store_true", help="print JSON instead of a table")
    entries.set_defaults(run=journal_main)
    close = actions.add_parser(
        "close",
        help="close the books of a business date: store its trial balance",
        description="Store the trial balance as of --date; no earlier date can be closed after it (provision "
        "first: `yunkai gl provision`). A later `gl report --as-of` that date shows the stored close beside "
        "what the journal says now.",
    )
    _server_arguments(close)
    close.add_argument("--date", required=True, help="business date YYYY-MM-DD")
    close.set_defaults(run=close_main)
    provision = actions.add_parser(
        "provision",
        help="set each product's loan-loss allowance to its expected credit loss (IFRS 9 stages)",
        description="From the open loans' overdue buckets: stage 1 (up to 30 days past due), stage 2 (31-90), "
        "stage 3 (over 90); each product's allowance becomes its principal outstanding times the stage's "
        "loss rate, by one transfer dated --date. Running it again changes nothing unless the book did.",
    )
    _server_arguments(provision)
    provision.add_argument("--date", required=True, help="business date YYYY-MM-DD")
    provision.set_defaults(run=provision_main)


GL_TIMEOUT_S = 60.0  # a journal read goes through every mapped account's history


def _ask(args: argparse.Namespace, command: str, call: Callable[[lending_pb2_grpc.LoanServiceStub], M]) -> M | None:
    """One call on the lending server; None (the refusal printed) if it was refused."""
    channel, stub = _stub(args)
    with channel:
        try:
            return call(stub)
        except grpc.RpcError as error:
            _refused(command, error)
            return None


def journal_main(args: argparse.Namespace) -> int:
    asked = pb.JournalRequest(date_from=args.date_from, date_to=args.date_to)
    reply = _ask(args, "gl journal", lambda stub: stub.GetJournal(asked, timeout=GL_TIMEOUT_S))
    if reply is None:
        return 1
    if args.json:
        _print(reply)
        return 0
    for e in reply.entries:
        print(f"{e.date}  {e.gl_code:<10} {e.name:<40} {e.debit / 100:>18,.2f} {e.credit / 100:>18,.2f}")
    return 0


def close_main(args: argparse.Namespace) -> int:
    asked = pb.ClosePeriodRequest(date=args.date)
    closed = _ask(args, "gl close", lambda stub: stub.ClosePeriod(asked, timeout=GL_TIMEOUT_S))
    if closed is None:
        return 1
    _print(closed)
    return 0


def provision_main(args: argparse.Namespace) -> int:
    asked = pb.ProvisionRequest(date=args.date)
    reply = _ask(args, "gl provision", lambda stub: stub.Provision(asked, timeout=GL_TIMEOUT_S))
    if reply is None:
        return 1
    _print(reply)
    return 0


def gl_main(args: argparse.Namespace) -> int:
    asked = pb.GlReportRequest(as_of=args.as_of)
    report = _ask(args, "gl report", lambda stub: stub.GetGlReport(asked, timeout=GL_TIMEOUT_S))
    if report is None:
        return 1
    if args.json:
        _print(report)
        return 0
    for line in report.lines:
        print(f"{line.gl_code:<10} {line.name:<40} {line.debit / 100:>18,.2f} {line.credit / 100:>18,.2f}")
    print(f"{'total':<51} {report.total_debit / 100:>18,.2f} {report.total_credit / 100:>18,.2f}")
    return 0 if report.total_debit == report.total_credit else 1
