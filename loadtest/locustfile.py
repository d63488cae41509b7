"""Locust users of yunkai: a partner platform's day over gRPC, every call in Locust's statistics.

    locust --headless -f loadtest/locustfile.py -u 100 -r 20 -t 1m --host 127.0.0.1:7000 \\
        --scoring-host 127.0.0.1:7100

Locust runs on gevent, our SDK on asyncio, so these users call the generated stubs
(proto/*_pb2_grpc.py) on channels made gevent-cooperative with gRPC's own gevent mode
(`grpc.experimental.gevent.init_gevent()`, before any channel exists), as Locust's gRPC
example does. An interceptor on each user's channels reports every call with
`events.request.fire`: a gRPC error, or a business outcome other than OK in the reply
(a transfer refused, an account not found), is a failure.

The day's mix (weights): balance queries 60, history queries 15, drawdowns 10, repayments 8,
credit applications 2 (scored with `credit_risk` when `--scoring-host` is given, then the
customer's accounts are opened if approved). Each user onboards a few customers of its own
(deposit and loan accounts sharing a hash tag, so one slot), draws down and repays within
what it drew, so every transfer it sends should succeed. Drawdown: loan -> deposit;
repayment: deposit -> loan (lending, issue 7, will replace both).
"""

from __future__ import annotations

import random
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment

from proto import inference_pb2, inference_pb2_grpc, ledger_pb2 as pb, ledger_pb2_grpc
from serving.transport import sync_role_channel

grpc_gevent.init_gevent()  # before any gRPC object: gRPC's I/O then yields to gevent

LEDGER = 156
CODE_DEPOSIT, CODE_LOAN = 2001, 1301
CODE_DRAWDOWN, CODE_REPAYMENT = 1, 2
MODEL = "credit_risk"
APPROVE_BELOW = 0.5  # probability of default under which an application is approved
CUSTOMERS_AT_START = 3
DEADLINE_S = 10.0


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]  # locust's hooks are untyped
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--scoring-host",
        default="",
        include_in_web_ui=True,
        help="HOST:PORT of a yunkai scoring server; without it credit applications are not scored",
    )


class Reporting(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports each unary call to Locust: name, time, size, and failure (gRPC or business)."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.label = ""  # what the user is doing (drawdown, repayment, ...): part of the name

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        started = time.perf_counter()
        call = continuation(details, request)
        exception = call.exception()  # waits (cooperatively) for the answer
        response = None if exception is not None else call.result()
        if response is not None:
            exception = _business_failure(response)
        method = details.method.rsplit("/", 1)[-1]
        self.environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc",
            name=f"{method} {self.label}".rstrip(),
            response_time=(time.perf_counter() - started) * 1000,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context=None,
            exception=exception,
        )
        return call


class BusinessFailure(Exception):
    """The call succeeded, but an event's outcome was not OK."""


def _business_failure(response: Any) -> BusinessFailure | None:
    results = getattr(response, "results", None)
    if results is not None:
        wrong = [pb.ResultCode.Name(r.code) for r in results if r.code != pb.OK]
        return BusinessFailure(", ".join(sorted(set(wrong)))) if wrong else None
    code = getattr(response, "code", None)
    if isinstance(code, int) and code != pb.OK:
        return BusinessFailure(pb.ResultCode.Name(code))
    return None


class PartnerPlatform(User):
    """A partner platform's customers: onboarding, drawdowns, repayments, and many queries."""

    wait_time = between(0.01, 0.1)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.reporting = Reporting(environment)
        self.channels: list[grpc.Channel] = []
        if not self.host:
            raise ValueError("give the router's HOST:PORT with --host")
        self.ledger = ledger_pb2_grpc.LedgerStub(self._channel(self.host))
        scoring_host = getattr(environment.parsed_options, "scoring_host", "") if environment.parsed_options else ""
        self.scoring = None
        if scoring_host:
            self.scoring = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel(scoring_host))
        self.features: list[str] = []
        self.customers: list[str] = []  # hash tags
        self.outstanding: dict[str, int] = {}  # drawn and not yet repaid, per customer
        self.rng = random.Random()

    def _channel(self, address: str) -> grpc.Channel:
        channel = grpc.intercept_channel(sync_role_channel(address, "service"), self.reporting)
        self.channels.append(channel)
        return channel

    def _call(self, label: str, method: Callable[..., Any], request: Any) -> Any:
        """One reported call; None when it failed (the failure is already in the statistics)."""
        self.reporting.label = label
        try:
            return method(request, timeout=DEADLINE_S)
        except grpc.RpcError:
            return None

    def on_start(self) -> None:
        if self.scoring is not None:
            reply = self._call("", self.scoring.ModelMetadata, inference_pb2.ModelMetadataRequest(name=MODEL))
            self.features = list(reply.feature_names) if reply is not None else []
        for _ in range(CUSTOMERS_AT_START):
            self.apply_for_credit()

    def on_stop(self) -> None:
        for channel in self.channels:
            channel.close()

    def _customer(self) -> str | None:
        return self.rng.choice(self.customers) if self.customers else None

    @task(60)
    def balance(self) -> None:
        if (tag := self._customer()) is not None:
            account = f"{{{tag}}}:{self.rng.choice(('deposit', 'loan'))}"
            self._call("balance", self.ledger.LookupAccounts, pb.LookupAccountsRequest(ids=[account]))

    @task(15)
    def history(self) -> None:
        if (tag := self._customer()) is not None:
            request = pb.GetAccountTransfersRequest(account_id=f"{{{tag}}}:deposit", limit=20, newest_first=True)
            self._call("history", self.ledger.GetAccountTransfers, request)

    @task(10)
    def drawdown(self) -> None:
        if (tag := self._customer()) is not None:
            amount = 100 * self.rng.randrange(1, 5_000)
            if self._transfer("drawdown", f"{{{tag}}}:loan", f"{{{tag}}}:deposit", amount, CODE_DRAWDOWN):
                self.outstanding[tag] += amount

    @task(8)
    def repayment(self) -> None:
        owing = [tag for tag, amount in self.outstanding.items() if amount > 0]
        if owing:
            tag = self.rng.choice(owing)
            amount = self.rng.randrange(1, self.outstanding[tag] + 1)
            if self._transfer("repayment", f"{{{tag}}}:deposit", f"{{{tag}}}:loan", amount, CODE_REPAYMENT):
                self.outstanding[tag] -= amount

    @task(2)
    def apply_for_credit(self) -> None:
        """Score the applicant; if approved (or unscored), open their deposit and loan accounts."""
        if self.scoring is not None and self.features:
            values = [self.rng.random() for _ in self.features]
            request = inference_pb2.ModelInferRequest(
                model_name=MODEL,
                inputs=[
                    inference_pb2.ModelInferRequest.InferInputTensor(
                        name="features", datatype="FP32", shape=[1, len(values)]
                    )
                ],
                raw_input_contents=[struct.pack(f"<{len(values)}f", *values)],
            )
            reply = self._call("application", self.scoring.ModelInfer, request)
            if reply is None:
                return
            [probability] = struct.unpack("<f", reply.raw_output_contents[0])
            if probability >= APPROVE_BELOW and self.customers:
                return  # declined (the first customers are always opened, so there is work to do)
        tag = f"L{uuid.uuid4().hex[:20]}"
        flags = pb.DEBITS_MUST_NOT_EXCEED_CREDITS  # a deposit never goes below zero
        accounts = [
            pb.Account(id=f"{{{tag}}}:deposit", ledger=LEDGER, code=CODE_DEPOSIT, flags=flags),
            pb.Account(id=f"{{{tag}}}:loan", ledger=LEDGER, code=CODE_LOAN),
        ]
        reply = self._call("open accounts", self.ledger.CreateAccounts, pb.CreateAccountsRequest(accounts=accounts))
        if reply is not None and all(r.code == pb.OK for r in reply.results):
            self.customers.append(tag)
            self.outstanding[tag] = 0

    def _transfer(self, label: str, debit: str, credit: str, amount: int, code: int) -> bool:
        transfer = pb.Transfer(id=uuid.uuid4().hex, debit_account_id=debit, credit_account_id=credit, amount=amount)
        transfer.ledger, transfer.code = LEDGER, code
        reply = self._call(label, self.ledger.CreateTransfers, pb.CreateTransfersRequest(transfers=[transfer]))
        return reply is not None and reply.results[0].code == pb.OK
