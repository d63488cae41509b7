"""The lending process: `yunkai lending serve --router HOST:PORT --data-dir D --port P [--book NAME]`.

Serves yunkai.lending.v1.ProductService (the product factory) and yunkai.lending.v1.LoanService
(lending/loan_service.py) over the ledger behind the router, whose nodes keep the book: its
catalogue, loans and credit lines (lending/book.py). The process keeps nothing but its audit
log, so any number of them serve one book (and a lost host loses no loan). Over gRPC with the shared
plumbing of proto/serving.py: settings from flags, YUNKAI_LENDING_* and `[lending]` in a
TOML file; JSON logs; health and reflection; graceful stop on SIGTERM. Bad parameters are
answered INVALID_ARGUMENT naming them, unknown products NOT_FOUND, lifecycle steps not
allowed FAILED_PRECONDITION; none of them changes anything. Loans answer the same way
(a refusal by the limits or the loan's state is FAILED_PRECONDITION, an unknown loan
NOT_FOUND), and UNAVAILABLE when the ledger could not finish a step: retry with the same id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import serving
from clients.ledger import LedgerClient, LedgerError
from clients.records import NAME_PATTERN, CommitFailed, Conflict, OtherRolesRecord
from lending.book import BOOK_DEFAULT, Book
from lending.loan_service import Contended, LedgerFailed, LoanService
from lending.loans import BadLoanRequest, LoanNotFound, LoanRefused
from lending.products import InvalidProduct, LifecycleRefused, ProductNotFound, ProductStore, StoreFull
from proto import lending_pb2 as pb, risk_pb2
from serving import BadRequest, Context, parse_request

log = logging.getLogger("yunkai.lending")

PRODUCT_SERVICE = "yunkai.lending.v1.ProductService"
LOAN_SERVICE = "yunkai.lending.v1.LoanService"
DECISION_SERVICE = risk_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7300,
    "data_dir": None,
    "metrics_port": None,
    "log_level": "INFO",
    "router": None,
    "risk": None,
    "book": BOOK_DEFAULT,
}
BOOK_REFRESH_S = 60.0  # how often the book's gauges are counted again: a scan of every slot's loans and lines

# How each refusal is answered; anything else is a bug and crashes the call loudly.
REFUSALS: serving.Refusals = (
    ((BadRequest, InvalidProduct, BadLoanRequest), grpc.StatusCode.INVALID_ARGUMENT),
    ((ProductNotFound, LoanNotFound), grpc.StatusCode.NOT_FOUND),
    ((LifecycleRefused, LoanRefused), grpc.StatusCode.FAILED_PRECONDITION),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OtherRolesRecord, grpc.StatusCode.PERMISSION_DENIED),
    ((LedgerFailed, LedgerError, CommitFailed), grpc.StatusCode.UNAVAILABLE),
    # Other lending servers changed the same records meanwhile: repeat the call.
    ((Contended, Conflict), grpc.StatusCode.ABORTED),
)

requests_total = Counter("yunkai_lending_requests_total", "Lending RPCs answered", ["method", "status"])
request_latency_s = Histogram("yunkai_lending_request_latency_seconds", "RPC latency in the server", ["method"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="the server's own directory: its audit log (required)")
    parser.add_argument(
        "--router",
        help="HOST:PORT of the ledger's router (required): the ledger's nodes keep the book and its product"
        " catalogue (lending/book.py); any number of lending servers may serve one book",
    )
    parser.add_argument(
        "--risk", help="HOST:PORT of `yunkai risk serve`: end of day tells it each loan's outcome (repaid, defaulted)"
    )
    parser.add_argument(
        "--book",
        help=f"the book's name: its records are apart from other books' on the same ledger (default {BOOK_DEFAULT})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="lending serve", section="lending", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    if not settings["data_dir"]:
        return "--data-dir is required (or YUNKAI_LENDING_DATA_DIR, or data_dir in [lending])"
    if not settings["router"]:
        return "--router is required (or YUNKAI_LENDING_ROUTER): the book and its catalogue live on the ledger"
    if not NAME_PATTERN.fullmatch(str(settings["book"])):
        return f"--book {settings['book']!r}: a book's name is 1-16 of a-z, 0-9"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    services = [PRODUCT_SERVICE, LOAN_SERVICE]
    await serving.serve(
        settings, role="lending", services=services, app=lambda server, port: _lending(settings, server), log=log
    )


@contextlib.asynccontextmanager
async def _lending(settings: dict[str, Any], server: grpc.aio.Server) -> AsyncIterator[Mapping[str, object]]:
    """The product factory, and with --router the loans over the ledger."""
    ledger = await LedgerClient.connect(str(settings["router"]), tls=settings["tls"], insecure=settings["tls"] is None)
    gauges: BookCollector | None = None
    counting: asyncio.Task[None] | None = None
    to_risk: grpc.aio.Channel | None = None
    try:
        book = Book(ledger, str(settings["book"]))
        store = ProductStore(book)
        await store.load()
        server.add_generic_rpc_handlers([ProductService(store).handler()])
        if settings["risk"]:
            to_risk = serving.channel(str(settings["risk"]), serving.client_credentials(settings["tls"]), [])
        risk = serving.SessionStub(to_risk, DECISION_SERVICE) if to_risk is not None else None
        service = LoanService(book, store, ledger, risk)
        server.add_generic_rpc_handlers([loan_handler(service)])
        gauges = BookCollector()
        REGISTRY.register(gauges)
        counting = asyncio.create_task(gauges.count(service))
        yield {"data_dir": settings["data_dir"], "products": len(list(store.codes())), "book": settings["book"]}
    finally:
        if counting is not None:
            counting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await counting
        if gauges is not None:
            REGISTRY.unregister(gauges)
        if to_risk is not None:
            await to_risk.close()
        await ledger.close()


class BookCollector(Collector):
    """The book as gauges, counted from the book's records every BOOK_REFRESH_S on the server's
    loop (a scrape reads the last count: a scan of every slot per scrape would be the ledger's
    load, not the book's): yunkai_lending_credit_lines{product}, yunkai_lending_loans{product,
    status} and yunkai_lending_outstanding{product,bucket} (open loans' principal, minor units)."""

    def __init__(self) -> None:
        self.report = pb.BookReport()

    async def count(self, service: LoanService) -> None:
        while True:
            try:
                self.report = await service.book_report(include_customers=False)
            except (LedgerError, LedgerFailed) as error:
                log.warning("the book's gauges were not counted; tried again later", extra={"reason": str(error)})
            await asyncio.sleep(BOOK_REFRESH_S)

    def collect(self) -> Iterator[Metric]:
        report = self.report
        lines = GaugeMetricFamily("yunkai_lending_credit_lines", "Credit lines held", labels=["product"])
        loans = GaugeMetricFamily("yunkai_lending_loans", "Loans by status", labels=["product", "status"])
        outstanding = GaugeMetricFamily(
            "yunkai_lending_outstanding",
            "Open loans' principal outstanding by overdue bucket",
            labels=["product", "bucket"],
        )
        for book in report.products:
            lines.add_metric([book.product_code], book.credit_lines)
            for status, count in sorted(book.loans.items()):
                loans.add_metric([book.product_code, status], count)
            for bucket, amount in sorted(book.outstanding_by_bucket.items()):
                outstanding.add_metric([book.product_code, bucket], amount)
        yield from (lines, loans, outstanding)


class ProductService:
    """yunkai.lending.v1.ProductService over a ProductStore."""

    def __init__(self, store: ProductStore) -> None:
        self.store = store

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "SaveDraft": self.save_draft,
            "PublishProduct": self.publish,
            "RetireProduct": self.retire,
            "GetProduct": self.get,
            "ListProducts": self.list,
        }
        return serving.unary_service(PRODUCT_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log)

    async def save_draft(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.SaveDraftRequest, data)
        if not request.HasField("parameters"):
            raise BadRequest("parameters: missing")
        product = await self.store.save_draft(request.parameters)
        log.info("draft saved", extra={"code": product.code, "version": product.version})
        return product

    async def publish(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=True)
        product = await self.store.publish(ref.code, ref.version)
        log.info("published", extra={"code": product.code, "version": product.version})
        return product

    async def retire(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=True)
        product = await self.store.retire(ref.code, ref.version)
        log.info("retired", extra={"code": product.code, "version": product.version})
        return product

    async def get(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=False)
        return await self.store.fetch(ref.code, ref.version)

    async def list(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ListProductsRequest, data)
        await self.store.load()
        products = self.store.list(request.include_drafts, request.include_retired)
        return pb.ListProductsResponse(products=products)


def _ref(data: bytes, version_required: bool) -> pb.ProductRef:
    ref = parse_request(pb.ProductRef, data)
    if not ref.code:
        raise BadRequest("code: missing")
    if version_required and ref.version == 0:
        # Publishing or retiring "the latest" could act on a version the caller never reviewed.
        raise BadRequest("version: missing; name the version to act on")
    return ref


def loan_handler(service: LoanService) -> grpc.GenericRpcHandler:
    """yunkai.lending.v1.LoanService: each method parses its request and calls the service."""

    async def approve(data: bytes, context: Context) -> Message:
        return await service.approve(parse_request(pb.ApproveCreditLineRequest, data))

    async def drawdown(data: bytes, context: Context) -> Message:
        return await service.drawdown(parse_request(pb.DrawdownRequest, data))

    async def get(data: bytes, context: Context) -> Message:
        return await service.get(parse_request(pb.LoanRef, data).loan_id)

    async def list_loans(data: bytes, context: Context) -> Message:
        return pb.ListLoansResponse(loans=await service.loans_of(parse_request(pb.ListLoansRequest, data).customer))

    async def repay(data: bytes, context: Context) -> Message:
        return await service.repay(parse_request(pb.RepayRequest, data), payoff=False)

    async def pay_off(data: bytes, context: Context) -> Message:
        return await service.repay(parse_request(pb.RepayRequest, data), payoff=True)

    async def write_off(data: bytes, context: Context) -> Message:
        return await service.write_off(parse_request(pb.WriteOffRequest, data))

    async def plan_eod(data: bytes, context: Context) -> Message:
        return await service.plan_eod(parse_request(pb.EodSlotsRequest, data))

    async def run_eod_slot(data: bytes, context: Context) -> Message:
        return await service.run_eod_slot(parse_request(pb.EodSlotRequest, data))

    async def gl_report(data: bytes, context: Context) -> Message:
        return await service.gl_report(parse_request(pb.GlReportRequest, data).as_of)

    async def journal(data: bytes, context: Context) -> Message:
        request = parse_request(pb.JournalRequest, data)
        return await service.journal_entries(request.date_from, request.date_to)

    async def close_period(data: bytes, context: Context) -> Message:
        return await service.close_period(parse_request(pb.ClosePeriodRequest, data).date)

    async def provision(data: bytes, context: Context) -> Message:
        return await service.provision(parse_request(pb.ProvisionRequest, data).date)

    async def book_report(data: bytes, context: Context) -> Message:
        return await service.book_report(parse_request(pb.BookReportRequest, data).include_customers)

    methods: dict[str, serving.Handler] = {
        "ApproveCreditLine": approve,
        "Drawdown": drawdown,
        "GetLoan": get,
        "ListLoans": list_loans,
        "Repay": repay,
        "PayOff": pay_off,
        "WriteOff": write_off,
        "PlanEod": plan_eod,
        "RunEodSlot": run_eod_slot,
        "GetGlReport": gl_report,
        "GetBookReport": book_report,
        "GetJournal": journal,
        "ClosePeriod": close_period,
        "Provision": provision,
    }
    return serving.unary_service(LOAN_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log, sessions=True)
