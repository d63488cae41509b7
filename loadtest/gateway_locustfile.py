"""Locust HTTP users of the open platform: partners' apps over HTTPS through the gateway (issue 19's benchmark).

    YUNKAI_BENCH_APP=<client id>:<secret> YUNKAI_BENCH_APPLICANTS=approved.json \\
    YUNKAI_BENCH_RATE_PER_USER=10 locust --headless -f loadtest/gateway_locustfile.py -u 50 -r 50 -t 60s \\
        --host https://127.0.0.1:8443 --csv out

`yunkai bench-gateway` (loadtest/gateway_bench.py) starts everything and runs this. Each user
is one of the partner's channels (sharing one token: the gateway counts token requests per
app): it onboards a customer, applies with an
applicant the model approves (a credit line opens), signs and draws a loan; then, at
YUNKAI_BENCH_RATE_PER_USER calls a second, the partner journey mix (weights): customer and
balance 45, loan 20, statement 10, drawdown 10 (agreement and loan: two calls), repayment 8,
new customer's application 7 (onboard and apply: two calls). Every call carries the partner's
ids and an Idempotency-Key; any answer but the expected one is a failure in the statistics.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid
from typing import Any

from gevent.lock import Semaphore
from locust import FastHttpUser, constant_throughput, task

PRODUCT = "SME-TAX-LOAN"
AMOUNT_REQUESTED_FEN = 5_000_000
DRAW_FEN = 1_000_000
DRAWN_ON = "2026-01-15"
CLIENT_ID, _, SECRET = os.environ.get("YUNKAI_BENCH_APP", ":").partition(":")
RATE_PER_USER = float(os.environ.get("YUNKAI_BENCH_RATE_PER_USER", "1"))
_APPLICANTS: list[dict[str, float]] = []
_TOKEN: list[Any] = []  # [the token this process's users share, when it was taken]
TOKEN_RENEW_AFTER_S = 480
_TOKEN_LOCK = Semaphore()


def _applicants() -> list[dict[str, float]]:
    if not _APPLICANTS:
        with open(os.environ["YUNKAI_BENCH_APPLICANTS"]) as handle:
            _APPLICANTS.extend(json.load(handle))
    return _APPLICANTS


def _ref() -> str:
    return uuid.uuid4().hex[:12]


class PartnerApp(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER)
    insecure = True  # TLS on loopback to the run's own development CA: the handshake is measured, not who signed

    def on_start(self) -> None:
        self.customers: list[str] = []
        self.loans: list[dict[str, Any]] = []
        self._new_customer()
        self.draw()

    def _token(self) -> str:
        """The app's token, asked for once per Locust process and shared by its users (as a
        partner's servers share theirs: the gateway counts token requests per app)."""
        with _TOKEN_LOCK:
            if _TOKEN and time.monotonic() - _TOKEN[1] > TOKEN_RENEW_AFTER_S:
                _TOKEN.clear()  # renewed before the gateway's 10 minutes run out
            if not _TOKEN:
                basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
                with self.client.post(
                    "/oauth/token",
                    data="grant_type=client_credentials",
                    headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
                    name="token",
                    catch_response=True,
                ) as reply:
                    if reply.status_code != 200:
                        reply.failure(f"token: {reply.status_code} {reply.text[:200]}")
                        raise RuntimeError("no token")
                    _TOKEN[:] = [reply.json()["access_token"], time.monotonic()]
            return str(_TOKEN[0])

    def _call(self, method: str, path: str, name: str, body: Any = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        headers = {"Authorization": f"Bearer {self._token()}"}
        if method == "POST":
            headers["Idempotency-Key"] = _ref()
        with self.client.request(method, path, json=body, headers=headers, name=name, catch_response=True) as reply:
            if reply.status_code not in expect:
                reply.failure(f"{reply.status_code} {reply.text[:200]}")
                return None
            reply.success()  # an expected refusal (a used-up credit line) is not a failure
            return reply.json()

    def _new_customer(self) -> None:
        customer = _ref()
        if self._call("POST", "/v1/customers", "onboard", {"customer_ref": customer, "name": "Bench Ltd"}) is None:
            return
        body = {
            "application_ref": _ref(),
            "customer_ref": customer,
            "product": PRODUCT,
            "amount_requested_fen": AMOUNT_REQUESTED_FEN,
            "fields": random.choice(_applicants()),
        }
        decision = self._call("POST", "/v1/applications", "apply", body)
        if decision is not None and decision["credit_line_opened"]:
            self.customers.append(customer)

    @task(45)
    def balance(self) -> None:
        if self.customers:
            self._call("GET", f"/v1/customers/{random.choice(self.customers)}", "customer")

    @task(20)
    def loan(self) -> None:
        if self.loans:
            self._call("GET", f"/v1/loans/{random.choice(self.loans)['loan_ref']}", "loan")

    @task(10)
    def statement(self) -> None:
        if self.customers:
            self._call("GET", f"/v1/customers/{random.choice(self.customers)}/statement?limit=10", "statement")

    @task(10)
    def draw(self) -> None:
        if not self.customers:
            return
        customer, loan_ref = random.choice(self.customers), _ref()
        agreement = {"customer_ref": customer, "document_base64": base64.b64encode(loan_ref.encode()).decode()}
        if self._call("PUT", f"/v1/loans/{loan_ref}/agreement", "agreement", agreement) is None:
            return
        body = {"loan_ref": loan_ref, "customer_ref": customer, "product": PRODUCT, "amount_fen": DRAW_FEN,
                "date": DRAWN_ON}  # fmt: skip
        loan = self._call("POST", "/v1/loans", "drawdown", body, expect=(201, 409))
        if loan is not None and "loan_ref" in loan:
            self.loans.append(loan)
        elif loan is not None:  # the line is used up: this customer is done drawing
            self.customers.remove(customer)

    @task(8)
    def repay(self) -> None:
        unpaid = [loan for loan in self.loans if not loan.get("repaid")]
        if not unpaid:
            return
        loan = random.choice(unpaid)
        first = loan["schedule"][0]
        body = {
            "repayment_ref": "r1",
            "amount_fen": first["principal_fen"] + first["interest_fen"] + first["fees_fen"],
            "date": first["due"],
        }
        if self._call("POST", f"/v1/loans/{loan['loan_ref']}/repayments", "repayment", body) is not None:
            loan["repaid"] = time.time()

    @task(7)
    def application(self) -> None:
        self._new_customer()
