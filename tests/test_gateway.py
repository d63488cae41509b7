"""The open platform on real processes: partners run the lending journey over HTTPS.

A router and two ledger nodes, a scoring server with a trained credit_risk model, lending and
risk, a Redis, and two `yunkai gateway serve` processes sharing one HTTPS port. Partners are
registered with the `yunkai partner` CLI; their apps call through clients/partner.py (httpx)
and raw HTTP, never the gateway's internals.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from clients.ledger import Account, LedgerClient, ResultCode
from clients.partner import ROUTES, PartnerApiError, PartnerClient, verify_signature
from clients.records import Put, Records
from cluster.commands import LocalCluster
from cluster.local import GatewayProcess, LendingProcess, RedisProcess, RiskProcess, free_port
from gateway import webhooks as webhooks_module
from gateway.api import LEDGER, _name
from gateway.idempotency import ANSWER_WAIT_S, Answer, Busy, Claimed, Idempotency, Mismatch, Replay
from gateway.registry import Registry, partner_tag
from gateway.watcher import Watcher, loan_key
from gateway.webhooks import Webhooks, event_key
from lending.limits import CreditLimits
from lending.loans import Accounts
from proto import lending_pb2 as lpb, lending_pb2_grpc
from serving.tls import TLS_DIR_ENV
from tests.conftest import aio_channel, channel, fresh

pytestmark = pytest.mark.timeout(300)

PRODUCT = "SME-TAX-LOAN"
ALL_SCOPES = "customers,applications,loans,repayments,statements,events"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory,
    cluster: LocalCluster,
    risk: RiskProcess,
    lending: LendingProcess,
    redis: RedisProcess,
) -> Iterator[list[GatewayProcess]]:
    """Two gateway processes on one HTTPS port, one token key, quotas counted in Redis."""
    key = str(tmp_path_factory.mktemp("gateway-key") / "token.key")
    port = free_port()
    upstream = ["--router", cluster.address, "--risk", risk.address, "--lending", lending.address]
    shared = [*upstream, "--token-key", key, "--quota-store", redis.url, "--watch-every-s", "1"]
    started = [GatewayProcess(str(tmp_path_factory.mktemp(f"gateway{i}")), port, shared).start() for i in range(2)]
    yield started
    for process in started:
        assert process.stop() == 0, process.log_tail()


def base_url(gateways: list[GatewayProcess]) -> str:
    return f"https://{gateways[0].http_address}"


def ca() -> str:
    return os.path.join(os.environ[TLS_DIR_ENV], "ca.pem")


def trusted() -> ssl.SSLContext:
    """What a partner's HTTP client trusts: the bank's CA (here the test session's)."""
    return ssl.create_default_context(cafile=ca())


def partner_cli(gateway: GatewayProcess, *words: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster.cli", "partner", *words[:1], "--gateway", gateway.address, *words[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def new_app(gateway: GatewayProcess, partner: str, scopes: str = ALL_SCOPES, *extra: str) -> tuple[str, str]:
    """An app of `partner` (registered first if it is not): (client id, secret), by the CLI."""
    registered = partner_cli(gateway, "register", partner, "--name", f"Partner {partner}")
    assert registered.returncode == 0 or "ALREADY_EXISTS" in registered.stderr, registered.stderr
    app = fresh("a").replace("-", "")
    added = partner_cli(gateway, "add-app", partner, app, "--scopes", scopes, *extra)
    assert added.returncode == 0, added.stderr
    client_id = re.search(r"client_id\s+(\S+)", added.stdout)
    secret = re.search(r"client_secret\s+(\S+)", added.stdout)
    assert client_id and secret, added.stdout
    return client_id.group(1), secret.group(1)


def partner(gateways: list[GatewayProcess], partner_id: str, scopes: str = ALL_SCOPES) -> PartnerClient:
    client_id, secret = new_app(gateways[0], partner_id, scopes)
    return PartnerClient(base_url(gateways), client_id, secret, verify=trusted())


def test_a_partner_runs_the_whole_journey_over_https(
    gateways: list[GatewayProcess], applicants: dict[str, dict[str, float]]
) -> None:
    """Onboard, apply with a document (approved: a credit line), sign, draw, repay, read the
    statement: each step through the partner client, the ids the partner's own."""
    customer, application, loan = fresh("c").replace("-", ""), fresh("app"), fresh("l").replace("-", "")
    with partner(gateways, "acme") as acme:
        onboarded = acme.onboard_customer(customer, "Tianjin Widgets Ltd")
        assert (onboarded["customer_ref"], onboarded["deposit_balance_fen"]) == (customer, 0)
        tax_return = b"2025 tax return of Tianjin Widgets Ltd"
        decision = acme.apply(application, customer, PRODUCT, 5_000_000, applicants["safe"], {"tax.pdf": tax_return})
        assert decision["outcome"] == "APPROVE" and decision["credit_line_opened"], decision
        assert decision["documents"] == [
            {"name": "tax.pdf", "sha256": hashlib.sha256(tax_return).hexdigest(), "bytes": len(tax_return)}
        ]
        assert acme.application(application) == decision
        with pytest.raises(PartnerApiError) as unsigned:
            acme.draw(loan, customer, PRODUCT, 2_000_000, "2026-01-15")
        assert unsigned.value.status == 409 and "agreement" in unsigned.value.message
        contract = b"loan agreement, signed by the customer"
        signed = acme.sign_agreement(loan, customer, contract)
        assert signed["sha256"] == hashlib.sha256(contract).hexdigest()
        drawn = acme.draw(loan, customer, PRODUCT, 2_000_000, "2026-01-15")
        assert (drawn["status"], drawn["principal_fen"], drawn["annual_rate_bps"]) == (
            "ACTIVE",
            2_000_000,
            decision["price_bps"],
        )
        assert drawn["agreement_sha256"] == signed["sha256"] and acme.loan(loan) == drawn
        first = drawn["schedule"][0]
        due = first["principal_fen"] + first["interest_fen"] + first["fees_fen"]
        with pytest.raises(PartnerApiError) as early:  # refused before any collected money moves
            acme.repay(loan, "r0", due, "2025-12-31")
        assert early.value.status == 409 and "before" in early.value.message
        assert acme.customer(customer)["deposit_balance_fen"] == 2_000_000
        paid = acme.repay(loan, "r1", due, first["due"])
        assert paid["amount_fen"] == due and paid["principal_outstanding_fen"] == 2_000_000 - first["principal_fen"]
        assert acme.repay(loan, "r1", due, first["due"]) == paid  # the same repayment again: applied once
        statement = acme.statement(customer)
        assert statement["deposit_balance_fen"] == acme.customer(customer)["deposit_balance_fen"]
        ins = sum(m["amount_fen"] for m in statement["movements"] if m["direction"] == "in")
        outs = sum(m["amount_fen"] for m in statement["movements"] if m["direction"] == "out")
        assert ins - outs == statement["deposit_balance_fen"] and ins == 2_000_000 + due


def test_a_partner_sees_only_what_it_onboarded(
    gateways: list[GatewayProcess], applicants: dict[str, dict[str, float]]
) -> None:
    customer, application = fresh("c").replace("-", ""), fresh("app")
    with partner(gateways, "bank") as mine, partner(gateways, "zeta") as other:
        mine.onboard_customer(customer, "Mine")
        mine.apply(application, customer, PRODUCT, 1_000_000, applicants["safe"])
        for call in (
            lambda: other.customer(customer),
            lambda: other.statement(customer),
            lambda: other.application(application),
            lambda: other.apply(fresh("app"), customer, PRODUCT, 1_000_000, applicants["safe"]),
        ):
            with pytest.raises(PartnerApiError) as hidden:
                call()
            assert hidden.value.status == 404, hidden.value  # not 403: nobody learns it exists
        # The other partner may use the same refs for its own customer: a different one.
        assert other.onboard_customer(customer, "Theirs")["name"] == "Theirs"
        assert mine.customer(customer)["name"] == "Mine"


def test_tokens_are_refused_when_missing_forged_expired_out_of_scope_rotated_or_revoked(
    gateways: list[GatewayProcess], tmp_path: Path
) -> None:
    url = base_url(gateways)
    client_id, secret = new_app(gateways[0], "acme", "customers,statements")
    with httpx.Client(base_url=url, verify=trusted()) as http:

        def token(*, scope: str = "", auth: tuple[str, str] = (client_id, secret)) -> httpx.Response:
            form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
            return http.post("/oauth/token", data=form, auth=auth)

        def read(bearer: str) -> httpx.Response:
            return http.get("/v1/customers/nobody", headers={"Authorization": f"Bearer {bearer}"})

        assert http.get("/v1/customers/nobody").status_code == 401
        assert token(auth=(client_id, "wrong")).json()["error"] == "invalid_client"
        assert token(scope="loans").json()["error"] == "invalid_scope"
        good = token().json()["access_token"]
        assert read(good).status_code == 404  # through every check: the customer is unknown
        forged = jwt.encode(jwt.decode(good, options={"verify_signature": False}), b"k" * 32, algorithm="HS256")
        refused = read(forged)
        assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]
        claims = jwt.decode(good, options={"verify_signature": False}) | {"exp": int(time.time()) - 60}
        expired = jwt.encode(claims, _token_key(gateways), algorithm="HS256")
        assert "expired" in read(expired).json()["message"]
        narrow = token(scope="statements").json()["access_token"]
        out_of_scope = read(narrow)
        assert out_of_scope.status_code == 403 and out_of_scope.json()["error"] == "insufficient_scope"
        # A rotated secret ends the old secret and its tokens (within the registry's refresh).
        rotated = partner_cli(gateways[0], "rotate-secret", client_id)
        assert rotated.returncode == 0, rotated.stderr
        fresh_secret = re.search(r"client_secret\s+(\S+)", rotated.stdout)
        assert fresh_secret is not None
        assert token().status_code == 401
        assert _eventually(lambda: read(good).status_code == 401)
        renewed = token(auth=(client_id, fresh_secret.group(1))).json()["access_token"]
        assert read(renewed).status_code == 404
        revoked = partner_cli(gateways[0], "revoke", client_id)
        assert revoked.returncode == 0 and "1 apps revoked" in revoked.stdout, revoked
        assert _eventually(lambda: read(renewed).status_code == 401)
        assert token(auth=(client_id, fresh_secret.group(1))).status_code == 401


def _token_key(gateways: list[GatewayProcess]) -> bytes:
    arguments = gateways[0].extra_args
    return Path(arguments[arguments.index("--token-key") + 1]).read_bytes()


def _eventually(check: object, timeout_s: float = 10.0) -> bool:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_post_runs_once_per_idempotency_key_and_bad_input_changes_nothing(
    gateways: list[GatewayProcess], cluster: LocalCluster
) -> None:
    client_id, secret = new_app(gateways[0], "acme")
    with PartnerClient(base_url(gateways), client_id, secret, verify=trusted()) as acme:
        headers = {"Authorization": f"Bearer {acme.token()}"}
    customer = fresh("c").replace("-", "")
    body = {"customer_ref": customer, "name": "Once Ltd"}
    with httpx.Client(base_url=base_url(gateways), verify=trusted(), headers=headers) as http:
        missing = http.post("/v1/customers", json=body)
        assert missing.status_code == 400 and "Idempotency-Key" in missing.json()["message"]
        bad = http.post(
            "/v1/customers", json={"customer_ref": "no spaces!", "name": ""}, headers={"Idempotency-Key": "k0"}
        )
        assert bad.status_code == 400 and "customer_ref" in bad.json()["message"], bad.json()
        assert http.get(f"/v1/customers/{customer}").status_code == 404  # nothing was onboarded
        first = http.post("/v1/customers", json=body, headers={"Idempotency-Key": f"k-{customer}"})
        again = http.post("/v1/customers", json=body, headers={"Idempotency-Key": f"k-{customer}"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        other = dict(body, name="Another Ltd")
        reused = http.post("/v1/customers", json=other, headers={"Idempotency-Key": f"k-{customer}"})
        assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
        twice = http.post("/v1/customers", json=body, headers={"Idempotency-Key": f"k2-{customer}"})
        assert twice.status_code == 409 and "onboarded already" in twice.json()["message"]
        # yunkai's id of a partner's customer already opened by another channel is not the partner's.
        taken = fresh("c").replace("-", "")
        asyncio.run(_open_elsewhere(cluster.address, f"acme{taken}"))
        elsewhere = {"customer_ref": taken, "name": "Not Yours Ltd"}
        refused = http.post("/v1/customers", json=elsewhere, headers={"Idempotency-Key": f"k-{taken}"})
        assert refused.status_code == 409 and "cannot be used" in refused.json()["message"], refused.json()
        assert http.get(f"/v1/customers/{taken}").status_code == 404
        # A refusal released the key before it was answered: the same key with a mended body runs at once.
        mended = {"customer_ref": fresh("c").replace("-", ""), "name": "Mended Ltd"}
        rerun = http.post("/v1/customers", json=mended, headers={"Idempotency-Key": f"k-{taken}"})
        assert rerun.status_code == 201 and rerun.json()["name"] == "Mended Ltd", rerun.json()
        assert http.get(f"/v1/customers/{customer}").json()["name"] == "Once Ltd"
        broken = http.post(
            "/v1/customers",
            content=b"{not json",
            headers={"Idempotency-Key": "k-broken", "Content-Type": "application/json"},
        )
        assert broken.status_code == 400


def test_an_idempotency_key_is_claimed_once_and_a_replay_right_after_the_answer_gets_it(cluster: LocalCluster) -> None:
    """The protocol under the routes (gateway/idempotency.py), on the ledger's records: the
    answer is stored after the caller has it, and a replay made meanwhile waits for it."""
    asyncio.run(_idempotency_protocol(cluster.address))


async def _idempotency_protocol(router: str) -> None:
    async with await LedgerClient.connect(router, tls_name="gateway") as ledger:  # records are the gateway's
        keys = Idempotency(Records(ledger, "idemtest"))
        app, key = fresh("app"), fresh("k")
        first = await keys.claim(app, "", key, "sha-1")
        assert isinstance(first, Claimed) and first.version == 1, first
        started = time.monotonic()
        running = await keys.claim(app, "", key, "sha-1")  # not answered: waits, then Busy
        assert isinstance(running, Busy) and running.retry_after_s > 100, running
        assert time.monotonic() - started >= ANSWER_WAIT_S
        assert isinstance(await keys.claim(app, "", key, "sha-2"), Mismatch)
        keys.answer_soon(first, Answer(201, b'{"n": 1}'))
        replay = await keys.claim(app, "", key, "sha-1")  # at once: finds the answer being stored
        assert replay == Replay(Answer(201, b'{"n": 1}')), replay
        # A refusal releases the key: the next request, whatever its body, claims it again.
        other = fresh("k")
        refused = await keys.claim(app, "", other, "sha-1")
        assert isinstance(refused, Claimed), refused
        await keys.answer(refused, Answer(409, b"{}"))  # a refusal is stored before it is answered (_once)
        again = await keys.claim(app, "", other, "sha-3")
        assert isinstance(again, Claimed) and again.version == refused.version + 2, (
            refused,
            again,
        )  # released, claimed


def test_the_event_log_reads_recent_windows_first_and_reaches_back_as_far_as_it_must(cluster: LocalCluster) -> None:
    """GET /v1/events (Webhooks.log) reads the last hour first and older windows only while it
    holds fewer than asked: events an hour, days and months old still come, newest first."""
    asyncio.run(_event_log(cluster.address))


async def _event_log(router: str) -> None:
    async with await LedgerClient.connect(router, tls_name="gateway") as ledger:
        webhooks = Webhooks(Registry(ledger), b"k" * 32)
        try:
            partner = "evlg"  # a partner id (4 of a-z, 0-9) no other test here uses
            now_ms = int(time.time() * 1000)
            ages_s = [5, 2 * 3600, 3 * 86400, 60 * 86400]  # one in each of LOG_WINDOWS_S
            for n, age_s in enumerate(ages_s):
                created = now_ms - age_s * 1000
                event = {"id": f"e{n}", "type": "drawdown", "created_unix_ms": created, "data": {}, "deliveries": {}}
                key = event_key(partner, created, f"e{n}")
                await webhooks.records.commit([Put("event", key, json.dumps(event).encode(), 0)])
            records, scans = webhooks.records, []
            scan = records.scan

            def counted(kind: str, slots: Any = None, prefix: str = "", after: str = "") -> Any:
                scans.append(after)
                return scan(kind, slots, prefix, after)

            records.scan = counted  # type: ignore[method-assign]  # the real scan, counted
            for limit in range(1, 6):
                scans.clear()
                logged = await webhooks.log(partner, "app", limit)
                assert [e["id"] for e in logged] == [f"e{n}" for n in range(min(limit, 4))], (limit, logged)
                # The hour holds one, the day two, the month three: each more asks one window further back.
                assert len(scans) == min(limit, 4) and (scans[-1] == "") == (limit >= 4), (limit, scans)
        finally:
            await webhooks.aclose()


def test_two_processes_leasing_one_event_in_the_same_millisecond_deliver_it_once(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateway processes' dispatchers take one due delivery at once, their clocks on the same
    millisecond (as two processes' rounds can be): one leases it and posts, the other is refused
    its lease. Their lease records were byte for byte alike before each carried a token, and the
    SDK took the loser's refused commit for its own first attempt: both posted."""
    clock = time.time()
    monkeypatch.setattr(webhooks_module, "time", type("FrozenTime", (), {"time": staticmethod(lambda: clock)}))
    asyncio.run(_same_millisecond(cluster.address))


async def _same_millisecond(router: str) -> None:
    async with await LedgerClient.connect(router, tls_name="gateway") as ledger:
        first, second = Webhooks(Registry(ledger), b"k" * 32), Webhooks(Registry(ledger), b"k" * 32)
        posts: list[str] = []

        async def post(client_id: str, body: bytes) -> str | None:
            posts.append(client_id)
            await asyncio.sleep(0.2)  # both leases are decided while the first posts
            return None

        try:
            for webhooks in (first, second):
                webhooks._post = post  # type: ignore[method-assign]  # the receiver, counted
            partner, created = "smms", int(time.time() * 1000)  # a partner id no other test here uses
            pending = {"attempts": 0, "state": "pending", "next_ms": 0, "last": "", "url": "http://x/"}
            record = {"id": "e1", "type": "drawdown", "created_unix_ms": created, "data": {}}
            record |= {"deliveries": {"app1": pending}, "lease_until_ms": 0}
            key = event_key(partner, created, "e1")
            await first.records.commit([Put("event", key, json.dumps(record).encode(), 0)])
            [read] = await first.records.read([("event", key)])
            assert read is not None
            attempted = await asyncio.gather(
                first._deliver(key, read.version, json.loads(read.value)),
                second._deliver(key, read.version, json.loads(read.value)),
            )
            assert posts == ["app1"] and sorted(attempted) == [0, 1], (posts, attempted)
            [after] = await first.records.read([("event", key)])
            assert after is not None and json.loads(after.value)["deliveries"]["app1"]["state"] == "delivered"
        finally:
            await first.aclose()
            await second.aclose()


def test_one_watcher_a_round_takes_a_partners_loans_and_another_takes_over_when_its_lease_lapses(
    cluster: LocalCluster, lending: LendingProcess
) -> None:
    """The round lease (gateway/watcher.py): of two gateway processes' watchers one looks at a
    partner's loans in a round; it renews its lease, and the other takes the partner once the
    holder's lease has lapsed (the holder gone). A lease it cannot read is taken too."""
    asyncio.run(_round_lease(cluster.address, lending.address))


async def _round_lease(router: str, lending: str) -> None:
    async with await LedgerClient.connect(router, tls_name="gateway") as ledger:
        webhooks = Webhooks(Registry(ledger), b"k" * 32)
        loans = aio_channel(lending, "gateway")
        try:
            stub = lending_pb2_grpc.LoanServiceStub(loans)
            first, second = (Watcher(webhooks, ledger, stub, LEDGER, every_s=1.0) for _ in range(2))
            partner = "wlse"  # a partner id no other test here uses
            seen = {"customer": f"{partner}c1", "bucket": "", "closed": False}
            await webhooks.records.commit(
                [Put("ploan", loan_key(partner, f"{partner}L1"), json.dumps(seen).encode(), 0)]
            )
            await first.watch_partner(partner)  # looks (lending has no such loan: logged, next round)
            assert (first.looked, second.looked) == (1, 0)
            await second.watch_partner(partner)  # held by the first: not looked at
            assert (first.looked, second.looked) == (1, 0)
            await first.watch_partner(partner)  # renewed
            await second.watch_partner(partner)
            assert (first.looked, second.looked) == (2, 0)
            await asyncio.sleep(2.3)  # the first stops renewing: its lease (2 x every_s) lapses
            await second.watch_partner(partner)
            await first.watch_partner(partner)
            assert (first.looked, second.looked) == (2, 1)
            [held] = await webhooks.records.read([("watch", f"{partner_tag(partner)}:watch")])
            assert held is not None
            await webhooks.records.commit([Put("watch", held.key, b'{"holder": "v9"}', held.version)])
            assert await first.take_round(partner)  # unreadable: taken, not a round lost
        finally:
            await loans.close()
            await webhooks.aclose()


def test_an_apps_daily_quota_holds_across_two_gateway_processes_on_one_port(gateways: list[GatewayProcess]) -> None:
    """Each call on a new connection (the kernel spreads them over both processes): the seventh
    of a quota of six is refused 429 with Retry-After, whichever process takes it."""
    client_id, secret = new_app(gateways[0], "acme", "customers", "--daily-quota", "6")
    with PartnerClient(base_url(gateways), client_id, secret, verify=trusted()) as app:
        bearer = app.token()  # the token endpoint is not counted
    before = [_audited(g) for g in gateways]
    answers = []
    for _ in range(9):
        with httpx.Client(base_url=base_url(gateways), verify=trusted()) as http:  # a new connection each time
            answers.append(http.get("/v1/customers/nobody", headers={"Authorization": f"Bearer {bearer}"}))
    assert [a.status_code for a in answers] == [404] * 6 + [429] * 3
    assert all(int(a.headers["retry-after"]) > 0 for a in answers[6:])
    served = [_audited(g) - b for g, b in zip(gateways, before, strict=True)]
    assert sum(served) == 9 and min(served) > 0, served  # both processes counted into one quota


def _audited(gateway: GatewayProcess) -> int:
    path = Path(gateway.data_dir) / "partners-audit.log"
    return sum(1 for line in path.read_text().splitlines() if "/v1/customers/{customer_ref}" in line)


def test_the_openapi_document_describes_every_route_the_partner_client_calls(gateways: list[GatewayProcess]) -> None:
    with httpx.Client(base_url=base_url(gateways), verify=trusted()) as http:
        document = http.get("/openapi.json").json()
        page = http.get("/docs")
    assert document["openapi"].startswith("3.")
    described = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert set(ROUTES) <= described, set(ROUTES) - described
    assert page.status_code == 200 and "Onboarding in five steps" in page.text
    for _method, path in ROUTES:
        assert f"<code>{path}</code>" in page.text, path
    schema = document["components"]["schemas"]["DrawdownIn"]
    assert set(schema["required"]) >= {"loan_ref", "customer_ref", "product", "amount_fen", "date"}
    assert json.dumps(schema)  # a plain JSON document


class Receiver:
    """A partner's webhook endpoint on loopback: it answers 500 to each event's first delivery
    (so the gateway retries), then 200, and keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []  # (Yunkai-Signature, body)
        self._refused: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = json.loads(body)["id"]
                first = event_id not in receiver._refused
                receiver._refused.add(event_id)
                if not first:
                    receiver.received.append((self.headers.get("Yunkai-Signature", ""), body))
                self.send_response(500 if first else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in (json.loads(body) for _s, body in list(self.received)) if e["type"] == event_type]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_signed_webhooks_tell_a_partner_of_decisions_drawdowns_freezes_and_overdue_loans(
    gateways: list[GatewayProcess],
    applicants: dict[str, dict[str, float]],
    lending: LendingProcess,
    cluster: LocalCluster,
) -> None:
    """Each event is delivered after a refused first attempt, signed with the app's signing
    secret; the delivery log shows both attempts; overdue and freeze events come from the
    watcher, which no partner call starts."""
    receiver = Receiver()
    client_id, secret = new_app(gateways[0], "hook")
    hooked = partner_cli(gateways[0], "webhook", client_id, "--url", receiver.url)
    assert hooked.returncode == 0, hooked.stderr
    found = re.search(r"signing_secret\s+([0-9a-f]+)", hooked.stdout)
    assert found is not None, hooked.stdout
    signing_secret = found.group(1)
    customer, loan = fresh("c").replace("-", ""), fresh("l").replace("-", "")
    try:
        with PartnerClient(base_url(gateways), client_id, secret, verify=trusted()) as app:
            app.onboard_customer(customer, "Hooked Ltd")
            app.apply(fresh("app"), customer, PRODUCT, 3_000_000, applicants["safe"])
            app.sign_agreement(loan, customer, b"signed")
            drawn = app.draw(loan, customer, PRODUCT, 1_000_000, "2026-01-15")
            assert _eventually(lambda: receiver.events("drawdown"), 20)
            # The bank freezes the customer's line (as risk's behaviour job does).
            asyncio.run(_freeze(cluster, f"hook{customer}"))
            assert _eventually(lambda: receiver.events("freeze"), 20)
            # End of day well past the first instalment's due date: the loan is overdue.
            late = (date.fromisoformat(drawn["schedule"][0]["due"]) + timedelta(days=40)).isoformat()
            loans = lending_pb2_grpc.LoanServiceStub(channel(lending.address, "operator"))
            plan = loans.PlanEod(lpb.EodSlotsRequest(date=late), timeout=30)
            for slot in plan.slots:
                loans.RunEodSlot(lpb.EodSlotRequest(date=late, slot=slot), timeout=60)
            assert _eventually(lambda: receiver.events("overdue"), 20)
            [overdue] = receiver.events("overdue")
            assert overdue["data"]["loan_ref"] == loan and overdue["data"]["days_past_due"] > 0

            def log() -> dict[str, dict[str, Any]]:
                return {e["type"]: e for e in app.events()["events"]}

            # The receiver has an event once its second delivery arrives; the gateway records it
            # delivered once that delivery's 200 is back: the log catches up a moment later.
            _eventually(lambda: all(e["delivery"]["state"] == "delivered" for e in log().values()), 20)
            logged = log()
        assert {"decision", "drawdown", "freeze", "overdue"} <= set(logged), logged
        for event in logged.values():
            assert event["delivery"]["state"] == "delivered" and event["delivery"]["attempts"] == 2, event
        for header, body in receiver.received:
            assert verify_signature(signing_secret, header, body), header
            assert not verify_signature(signing_secret, header, body + b" "), "a changed body must not verify"
        assert len({json.loads(b)["id"] for _h, b in receiver.received}) == len(receiver.received)  # each once
    finally:
        receiver.close()


async def _open_elsewhere(router: str, customer: str) -> None:
    """A customer's deposit opened by another channel (an internal service), not the gateway."""
    async with await LedgerClient.connect(router) as ledger:
        [opened] = await ledger.create_accounts([Account(Accounts(customer, "", "").deposit, 156, 2011)])
        assert opened.code is ResultCode.OK, opened


async def _freeze(cluster: LocalCluster, customer: str) -> None:
    async with await LedgerClient.connect(cluster.address) as ledger:
        outcome = await CreditLimits(ledger, 156).freeze(customer, None, "bankfreeze1")
        assert outcome.code is ResultCode.OK, outcome


ARTIFACTS = Path(os.environ.get("YUNKAI_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_a_customer_applies_signs_and_draws_on_the_hosted_pages_in_a_real_browser(
    gateways: list[GatewayProcess], applicants: dict[str, dict[str, float]]
) -> None:
    """The partner opens a session for its customer; in Chromium (a phone's viewport) the
    customer applies, sees the approval, signs the agreement and draws, in the partner's brand;
    screenshots of each step are kept in test-artifacts/. The session reaches no other customer."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "no chromium: run cluster/install-chromium.sh (make services)"
    customer, other = fresh("c").replace("-", ""), fresh("c").replace("-", "")
    with partner(gateways, "shop") as shop:
        shop.onboard_customer(customer, "Page Ltd")
        shop.onboard_customer(other, "Someone Else Ltd")
        session = shop.h5_session(customer, PRODUCT, applicants["safe"], "Shop Finance", "#2e7d32")
        token = session["url"].split("#session=", 1)[1]
        with httpx.Client(base_url=base_url(gateways), verify=trusted()) as http:
            as_session = {"Authorization": f"Bearer {token}", "Idempotency-Key": "elsewhere"}
            elsewhere = {"customer_ref": other, "document_base64": "c2lnbmVk"}
            assert http.put("/v1/loans/x1/agreement", json=elsewhere, headers=as_session).status_code == 404
            assert http.get(f"/v1/customers/{customer}", headers=as_session).status_code == 403  # not its scope
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
                page = context.new_page()
                page.goto(base_url(gateways) + session["url"])
                assert "Shop Finance" in page.inner_text("#brand")
                page.screenshot(path=str(ARTIFACTS / "h5-1-apply.png"))
                page.fill("#amount", "30000")
                page.click("#apply-button")
                page.wait_for_selector("#decision.on", timeout=30_000)
                assert page.inner_text("#outcome") == "Approved", page.inner_text("#error")
                page.screenshot(path=str(ARTIFACTS / "h5-2-decision.png"))
                page.click("#to-sign")
                page.fill("#signer", "Li Wei")
                page.fill("#draw-amount", "20000")
                page.screenshot(path=str(ARTIFACTS / "h5-3-sign.png"))
                page.click("#sign-button")
                page.wait_for_selector("#done.on", timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "h5-4-loan.png"))
                detail = page.inner_text("#loan-detail")
            finally:
                browser.close()
        found = re.match(r"Loan (\S+):", detail)
        assert found is not None, detail
        loan = shop.loan(found.group(1))
        assert (loan["customer_ref"], loan["principal_fen"], loan["status"]) == (customer, 2_000_000, "ACTIVE")
        assert len(loan["agreement_sha256"]) == 64 and loan["agreement_sha256"][:12] in detail
    for step in ("1-apply", "2-decision", "3-sign", "4-loan"):
        assert (ARTIFACTS / f"h5-{step}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_locust_partner_users_run_the_journey_mix_through_the_gateway_without_failures(
    gateways: list[GatewayProcess], applicants: dict[str, dict[str, float]], tmp_path: Path
) -> None:
    """loadtest/gateway_locustfile.py, briefly (what `yunkai bench-gateway` runs at length):
    every kind of call is made, and none fails."""
    client_id, secret = new_app(gateways[0], "load")
    approved = tmp_path / "approved.json"
    approved.write_text(json.dumps([applicants["safe"]]))
    env = {
        **os.environ,
        "YUNKAI_BENCH_APP": f"{client_id}:{secret}",
        "YUNKAI_BENCH_APPLICANTS": str(approved),
        "YUNKAI_BENCH_RATE_PER_USER": "8",
    }
    locust = Path(sys.executable).parent / "locust"
    locustfile = Path(__file__).resolve().parent.parent / "loadtest" / "gateway_locustfile.py"
    command = [str(locust), "--headless", "-f", str(locustfile), "-u", "3", "-r", "3", "-t", "6s"]
    command += ["--host", base_url(gateways), "--csv", str(tmp_path / "run"), "--only-summary"]
    ran = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    with open(tmp_path / "run_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    failures = (tmp_path / "run_failures.csv").read_text()
    assert rows["Aggregated"]["Failure Count"] == "0", failures + ran.stderr[-2000:]
    made = {name for name, row in rows.items() if int(row["Request Count"]) > 0}
    assert {"token", "onboard", "apply", "agreement", "drawdown", "customer"} <= made, made


def test_a_customers_session_holds_no_more_than_its_app_and_applies_only_with_the_partners_data(
    gateways: list[GatewayProcess], applicants: dict[str, dict[str, float]]
) -> None:
    customer = fresh("c").replace("-", "")
    client_id, secret = new_app(gateways[0], "shop", "customers,applications")  # no loans
    with PartnerClient(base_url(gateways), client_id, secret, verify=trusted()) as shop:
        shop.onboard_customer(customer, "Narrow Ltd")
        session = shop.h5_session(customer, PRODUCT, applicants["safe"], "Shop")
    token = session["url"].split("#session=", 1)[1]
    assert jwt.decode(token, options={"verify_signature": False})["scope"] == "applications"
    as_session = {"Authorization": f"Bearer {token}"}
    application = {
        "application_ref": "s1",
        "customer_ref": customer,
        "product": PRODUCT,
        "amount_requested_fen": 1_000_000,
        "fields": applicants["safe"],
    }
    with httpx.Client(base_url=base_url(gateways), verify=trusted(), headers=as_session) as http:
        signed = http.put("/v1/loans/s1/agreement", json={"customer_ref": customer, "document_base64": "eA=="})
        assert signed.status_code == 403  # the app has no loans scope: neither has its session
        again = {"customer_ref": customer, "product": PRODUCT, "brand_name": "Mine"}
        assert http.post("/v1/h5/sessions", json=again).status_code == 403  # a session opens no other
        richer = dict(application, fields=dict(applicants["safe"], Income=10_000.0))
        refused = http.post("/v1/applications", json=richer, headers={"Idempotency-Key": "s1"})
        assert refused.status_code == 400 and "fields" in refused.json()["message"]
        larger = dict(application, amount_requested_fen=10**11)
        assert http.post("/v1/applications", json=larger, headers={"Idempotency-Key": "s2"}).status_code == 400
        decided = http.post("/v1/applications", json=application, headers={"Idempotency-Key": "s3"})
        assert decided.status_code == 201 and decided.json()["outcome"] == "APPROVE", decided.json()


def test_a_status_a_newer_server_sends_is_named_not_a_500_after_the_call_has_acted() -> None:
    """Risk's and lending's enums in the gateway's answers (gateway/api.py `_name`)."""
    assert _name(lpb.LoanStatus, lpb.ACTIVE) == "ACTIVE"
    assert _name(lpb.LoanStatus, 99) == "UNKNOWN_99"
