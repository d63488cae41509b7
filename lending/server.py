"""The lending process: `yunkai lending serve --data-dir D --port P [--router HOST:PORT]`.

Serves yunkai.lending.v1.ProductService (the product factory) and, given the ledger's
router, yunkai.lending.v1.LoanService (lending/loan_service.py) over gRPC with the shared
plumbing of proto/serving.py: settings from flags, YUNKAI_LENDING_* and `[lending]` in a
TOML file; JSON logs; health and reflection; graceful stop on SIGTERM. Bad parameters are
answered INVALID_ARGUMENT naming them, unknown products NOT_FOUND, lifecycle steps not
allowed FAILED_PRECONDITION; none of them changes anything. Loans answer the same way
(a refusal by the limits or the loan's state is FAILED_PRECONDITION, an unknown loan
NOT_FOUND), and UNAVAILABLE when the ledger could not finish a step: retry with the same id.
"""

from __future__ import annotations

import argparse
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
from lending.loan_service import LedgerFailed, LoanService, LoanStore
from lending.loans import SLOTS_TOTAL_DEFAULT, BadLoanRequest, LoanNotFound, LoanRefused
from lending.products import InvalidProduct, LifecycleRefused, ProductNotFound, ProductStore, StoreFull
from proto import lending_pb2 as pb, risk_pb2_grpc
from serving import BadRequest, Context, parse_request

log = logging.getLogger("yunkai.lending")

PRODUCT_SERVICE = "yunkai.lending.v1.ProductService"
LOAN_SERVICE = "yunkai.lending.v1.LoanService"

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 7300,
    "data_dir": None,
    "metrics_port": None,
    "log_level": "INFO",
    "router": None,
    "risk": None,
    "slots_total": SLOTS_TOTAL_DEFAULT,
}

# How each refusal is answered; anything else is a bug and crashes the call loudly.
REFUSALS: serving.Refusals = (
    ((BadRequest, InvalidProduct, BadLoanRequest), grpc.StatusCode.INVALID_ARGUMENT),
    ((ProductNotFound, LoanNotFound), grpc.StatusCode.NOT_FOUND),
    ((LifecycleRefused, LoanRefused), grpc.StatusCode.FAILED_PRECONDITION),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ((LedgerFailed, LedgerError), grpc.StatusCode.UNAVAILABLE),
)

requests_total = Counter("yunkai_lending_requests_total", "Lending RPCs answered", ["method", "status"])
request_latency_s = Histogram("yunkai_lending_request_latency_seconds", "RPC latency in the server", ["method"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--data-dir", help="directory of the product catalogue's and loans' RocksDB (required)")
    parser.add_argument("--router", help="HOST:PORT of the ledger's router: serve LoanService over the ledger")
    parser.add_argument(
        "--risk", help="HOST:PORT of `yunkai risk serve`: end of day tells it each loan's outcome (repaid, defaulted)"
    )
    parser.add_argument(
        "--slots-total",
        type=int,
        help=f"the ledger's slot count, which end of day partitions loans by (default {SLOTS_TOTAL_DEFAULT})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="lending serve", section="lending", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    if not settings["data_dir"]:
        return "--data-dir is required (or YUNKAI_LENDING_DATA_DIR, or data_dir in [lending])"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    services = [PRODUCT_SERVICE] + ([LOAN_SERVICE] if settings["router"] else [])
    await serving.serve(
        settings, role="lending", services=services, app=lambda server, port: _lending(settings, server), log=log
    )


@contextlib.asynccontextmanager
async def _lending(settings: dict[str, Any], server: grpc.aio.Server) -> AsyncIterator[Mapping[str, object]]:
    """The product factory, and with --router the loans over the ledger."""
    store = ProductStore(str(settings["data_dir"]))
    loans: LoanStore | None = None
    ledger: LedgerClient | None = None
    book: BookCollector | None = None
    to_risk: grpc.aio.Channel | None = None
    try:
        server.add_generic_rpc_handlers([ProductService(store).handler()])
        if settings["router"]:
            loans = LoanStore(str(settings["data_dir"]))
            ledger = await LedgerClient.connect(
                str(settings["router"]), tls=settings["tls"], insecure=settings["tls"] is None
            )
            if settings["risk"]:
                to_risk = serving.channel(str(settings["risk"]), serving.client_credentials(settings["tls"]), [])
            risk = risk_pb2_grpc.DecisionServiceStub(to_risk) if to_risk is not None else None
            service = LoanService(loans, store, ledger, int(settings["slots_total"]), risk)
            server.add_generic_rpc_handlers([loan_handler(service)])
            book = BookCollector(service)
            REGISTRY.register(book)
        yield {"data_dir": settings["data_dir"], "products": len(list(store.codes()))}
    finally:
        if book is not None:
            REGISTRY.unregister(book)
        if to_risk is not None:
            await to_risk.close()
        if ledger is not None:
            await ledger.close()
        if loans is not None:
            loans.close()
        store.close()


class BookCollector(Collector):
    """The book as gauges, computed at each scrape from the loan store (no ledger read):
    yunkai_lending_credit_lines{product}, yunkai_lending_loans{product,status} and
    yunkai_lending_outstanding{product,bucket} (open loans' principal, minor units)."""

    def __init__(self, service: LoanService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        report = self.service.book_report(include_customers=False)
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
        product = self.store.save_draft(request.parameters)
        log.info("draft saved", extra={"code": product.code, "version": product.version})
        return product

    async def publish(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=True)
        product = self.store.publish(ref.code, ref.version)
        log.info("published", extra={"code": product.code, "version": product.version})
        return product

    async def retire(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=True)
        product = self.store.retire(ref.code, ref.version)
        log.info("retired", extra={"code": product.code, "version": product.version})
        return product

    async def get(self, data: bytes, context: Context) -> Message:
        ref = _ref(data, version_required=False)
        return self.store.get(ref.code, ref.version)

    async def list(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ListProductsRequest, data)
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
        return service.get(parse_request(pb.LoanRef, data).loan_id)

    async def list_loans(data: bytes, context: Context) -> Message:
        return pb.ListLoansResponse(loans=service.list(parse_request(pb.ListLoansRequest, data).customer))

    async def repay(data: bytes, context: Context) -> Message:
        return await service.repay(parse_request(pb.RepayRequest, data), payoff=False)

    async def pay_off(data: bytes, context: Context) -> Message:
        return await service.repay(parse_request(pb.RepayRequest, data), payoff=True)

    async def write_off(data: bytes, context: Context) -> Message:
        return await service.write_off(parse_request(pb.WriteOffRequest, data))

    async def plan_eod(data: bytes, context: Context) -> Message:
        return service.plan_eod(parse_request(pb.EodSlotsRequest, data))

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
        return service.book_report(parse_request(pb.BookReportRequest, data).include_customers)

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
    return serving.unary_service(LOAN_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log)
