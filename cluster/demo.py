"""`yunkai demo` (what `make run` starts): a whole local yunkai and a short walk through it.

1. The ledger: a router and three nodes on loopback; through the SDK it opens a customer's
   deposit and loan accounts (one slot, by their hash tag) and a bank fee account (another
   slot, often on another node), draws the loan down into the deposit, reserves and posts a
   two-phase repayment, charges a fee across nodes (the durable outbox), shows a refused
   overdraft and an idempotent replay, and prints balances and history.
2. The business on top (skipped with --ledger-only): it trains the credit_risk,
   early_warning and repayment_willingness models into a registry (CatBoost exported to
   ONNX), starts a scoring node, a lending server (with the sample product catalogue) and a
   risk server, then decides a credit application (scored, decided by the product's
   decision table; the approval opens the credit line in the lending service at the decided
   limit and price), draws a loan on that line (at the decided price), repays its first instalment
   and assesses the borrower's behaviour from their repayment records. Each run uses a new
   customer, so the demo can be repeated on one data directory.
3. The open platform (with the business): a partner gateway; a partner "demo" and an app are
   registered, and the app runs the journey over HTTPS (onboard, apply, sign, draw, repay).
   The gateway keeps serving as a sandbox: the app's test credentials, the docs page and a
   customer's hosted-pages link are printed at the end.
Every process speaks mutual TLS with certificates made in DATA_DIR/tls (a development CA;
--insecure for plaintext). Everything keeps serving for you to call until Ctrl-C (unless --exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from clients.ledger import (
    Account,
    AccountFlags,
    LedgerClient,
    Transfer,
    TransferFlags,
)
from clients.partner import PartnerClient
from cluster.commands import LocalCluster
from cluster.local import GatewayProcess, LendingProcess, RiskProcess, ScoringProcess, ServiceProcess, free_port
from gateway.registry import SCOPES
from proto import (
    gateway_pb2 as gpb,
    gateway_pb2_grpc,
    lending_pb2 as lpb,
    lending_pb2_grpc,
    risk_pb2 as rpb,
    risk_pb2_grpc,
)
from serving.tls import Tls
from serving.transport import sync_channel

CNY = 156  # ISO 4217 numeric code, used as the ledger (book) number
MODELS = ("credit_risk", "early_warning", "repayment_willingness")
PRODUCT = "SME-TAX-LOAN"
# An application in the SME-TAX-LOAN flow's fields (the credit data's columns, scoring/datasets.py).
APPLICANT = {
    "Seniority": 9, "Home": 5, "Time": 60, "Age": 30, "Marital": 1, "Records": 0, "Job": 1, "Expenses": 73,
    "Income": 129, "Assets": 0, "Debt": 0, "Amount": 800, "Price": 846,
}  # fmt: skip
# What the bank knows of the business from outside the ledger (tax, invoices, courts, the owner's age).
PROFILE = {
    "tax_paid_12m_k": 48.0, "invoices_12m": 140.0, "invoice_growth_pct": 12.0, "registration_age_years": 7.5,
    "judicial_records": 0.0, "industry_code": 2.0, "AGE": 45.0,
}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="keep the cluster's data here (default: a new temporary directory)")
    parser.add_argument(
        "--port",
        type=int,
        default=7000,
        help="router port; nodes take the next 3, scoring +200, lending +300, risk +400 (default 7000; 0: any free)",
    )
    parser.add_argument("--exit", action="store_true", help="stop everything after the walk-through")
    parser.add_argument("--ledger-only", action="store_true", help="only the ledger: no models, lending or risk")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext, no identities, no authorization (logged as a warning)"
    )


def _fen(amount: int) -> str:
    return f"{amount / 100:,.2f} CNY"


def main(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="yunkai-demo-")
    cluster = LocalCluster(data_dir, nodes=3, port=args.port, replicas=3, insecure=args.insecure)
    print(f"starting a router and 3 ledger nodes, every slot on all three (data in {data_dir}) ...")
    cluster.start()
    services: list[ServiceProcess] = []
    try:
        print(f"router serving on {cluster.address}; nodes on {', '.join(n.address for n in cluster.nodes)}\n")
        if cluster.tls_dir is not None:
            print(f"every process speaks mutual TLS; identities in {cluster.tls_dir}\n")
        asyncio.run(_walk_through(cluster.address, cluster.tls("service")))
        customer = ""
        sandbox: Sandbox | None = None
        if not args.ledger_only:
            services = _start_business(cluster, args.port)
            customer = _business_walk_through(services[1], services[2], cluster.tls("operator"))
            gateway = _start_gateway(cluster, services[1], services[2], args.port)
            services.append(gateway)
            sandbox = _partner_walk_through(gateway, cluster)
        if args.exit:
            return 0
        print(f"\nEverything keeps serving; the router is {cluster.address}. Ctrl-C stops it.")
        if cluster.tls_dir is not None:
            print(f"First: export YUNKAI_TLS_DIR={cluster.tls_dir}   (the operator's and services' certificates)")
        print(f"Try: yunkai cluster status --router {cluster.address}")
        if services:
            print(f"     yunkai loan list --lending {services[1].address} --customer {customer}")
            print(f"     yunkai risk followups --risk {services[2].address}")
        if sandbox is not None:
            print(
                f"\nThe open platform's sandbox: {sandbox.url} (docs at {sandbox.url}/docs), partner credentials"
                f"\n  client_id {sandbox.client_id}\n  client_secret {sandbox.secret}"
                f"\n  a customer's hosted pages: {sandbox.url}{sandbox.h5_url[:60]}..."
            )
        running = [p for p in [cluster.router, *cluster.nodes, *services] if p is not None]
        while True:
            stopped = [p for p in running if p.process is None or p.process.poll() is not None]
            if stopped:
                for process in stopped:
                    print(f"{process.kind} {process.address} stopped; its log: {process.log_path}")
                return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        for service in reversed(services):
            service.stop()
        cluster.stop()


async def _walk_through(router: str, tls: Tls | None) -> None:
    run = str(time.time_ns())  # fresh ids per run, so the demo can be repeated on one cluster
    deposit, loan, fees = f"{{c42:{run}}}:deposit", f"{{c42:{run}}}:loan", f"bank:fees:{run}"
    async with await LedgerClient.connect(router, tls=tls, insecure=tls is None) as ledger:
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


def _start_business(cluster: LocalCluster, port: int) -> list[ServiceProcess]:
    """Train the models, then start scoring, lending and risk (in that order): [scoring, lending, risk]."""
    from scoring import datasets, train  # heavy (catboost, pandas): only here

    data_dir, router = cluster.data_dir, cluster.address
    registry = Path(data_dir) / "models"
    for name in MODELS:
        if not (registry / name / "1").exists():
            print(f"\ntraining {name} (CatBoost, exported to ONNX behind the parity gate) ...", flush=True)
            outcome = train.train_one(name, datasets.LOADERS[name](), registry, 1)
            assert outcome.admitted, outcome
    offset = (lambda n: port + n) if port else (lambda n: 0)
    scoring = ScoringProcess(str(registry), ["--log-level", "WARNING", *cluster.identity_args("scoring")])
    # With fixed ports the lending server knows where risk will be: its end of day tells it
    # loans' outcomes (repaid, defaulted) for the models that scored them.
    tell_risk = ["--risk", f"127.0.0.1:{port + 400}"] if port else []
    lending = LendingProcess(
        os.path.join(data_dir, "lending"),
        ["--router", router, "--log-level", "WARNING", *tell_risk, *cluster.identity_args("lending")],
    )
    risk = RiskProcess(
        os.path.join(data_dir, "risk"), ["--router", router, "--log-level", "WARNING", *cluster.identity_args("risk")]
    )
    started: list[ServiceProcess] = []
    try:
        order: list[tuple[ServiceProcess, int]] = [(scoring, 200), (lending, 300), (risk, 400)]
        for process, shift in order:
            process.port = offset(shift)
            if process is risk:
                process.extra_args += ["--scoring", scoring.address, "--lending", lending.address]
            started.append(process.start())
    except BaseException:
        for running in reversed(started):
            running.stop()
        raise
    print(f"scoring on {scoring.address}, lending on {lending.address}, risk on {risk.address}\n")
    return started


@dataclass(frozen=True)
class Sandbox:
    """The demo's partner: where the gateway answers and the app's test credentials."""

    url: str
    client_id: str
    secret: str
    h5_url: str


def _start_gateway(cluster: LocalCluster, lending: ServiceProcess, risk: ServiceProcess, port: int) -> GatewayProcess:
    """The partner gateway: its registry on port + 500, partners' HTTPS on port + 1443 (8443 by default)."""
    upstream = ["--router", cluster.address, "--risk", risk.address, "--lending", lending.address]
    http_port = port + 1443 if port else free_port()
    gateway = GatewayProcess(
        os.path.join(cluster.data_dir, "gateway"),
        http_port,
        [*upstream, "--log-level", "WARNING", *cluster.identity_args("gateway")],
    )
    gateway.port = port + 500 if port else 0
    gateway.start()
    print(f"\npartner gateway: {_gateway_url(cluster, gateway)} (partners' HTTPS API), registry on {gateway.address}")
    return gateway


def _gateway_url(cluster: LocalCluster, gateway: GatewayProcess) -> str:
    return f"{'https' if cluster.tls_dir is not None else 'http'}://{gateway.http_address}"


def _partner_walk_through(gateway: GatewayProcess, cluster: LocalCluster) -> Sandbox:
    """A partner's app runs the journey over HTTPS: onboard, apply, sign, draw, repay."""
    run = str(time.time_ns())[-9:]
    with sync_channel(gateway.address, cluster.tls("operator")) as to_registry:
        partners = gateway_pb2_grpc.PartnersStub(to_registry)
        with contextlib.suppress(grpc.RpcError):  # registered by an earlier run on this data directory
            partners.RegisterPartner(gpb.RegisterPartnerRequest(partner_id="demo", name="Demo Partner"), timeout=30)
        app = partners.AddApp(gpb.AddAppRequest(partner_id="demo", app=f"a{run}", scopes=SCOPES), timeout=30)
    url = _gateway_url(cluster, gateway)
    verify: str | bool = os.path.join(cluster.tls_dir, "ca.pem") if cluster.tls_dir is not None else False
    customer, loan = f"p{run}", f"l{run}"
    with PartnerClient(url, app.app.client_id, app.client_secret, verify=verify) as partner:
        partner.onboard_customer(customer, "Demo Trading Co")
        decision = partner.apply(f"a{run}", customer, PRODUCT, 5_000_000, APPLICANT, {"tax.pdf": b"tax return"})
        print(f"partner {app.app.client_id}: customer {customer} onboarded; application {decision['outcome']}")
        signed = partner.sign_agreement(loan, customer, b"loan agreement, signed")
        drawn = partner.draw(loan, customer, PRODUCT, 1_000_000, "2026-01-15")
        first = drawn["schedule"][0]
        due = first["principal_fen"] + first["interest_fen"] + first["fees_fen"]
        paid = partner.repay(loan, "r1", due, first["due"])
        deposit = partner.customer(customer)["deposit_balance_fen"]
        print(
            f"partner loan {loan}: {_fen(drawn['principal_fen'])} drawn (agreement {signed['sha256'][:12]}...),"
            f" {_fen(paid['amount_fen'])} repaid over HTTPS; deposit {_fen(deposit)}"
        )
        h5 = partner.h5_session(customer, PRODUCT, APPLICANT, "Demo Partner")
    return Sandbox(url, app.app.client_id, app.client_secret, h5["url"])


def _business_walk_through(lending: ServiceProcess, risk: ServiceProcess, tls: Tls | None) -> str:
    """The lending walk-through; answers the demo's customer."""
    from lending.products import SAMPLE_CATALOGUE, read_catalogue

    run = str(time.time_ns())[-9:]  # fresh ids and a new customer per run
    customer = f"demo{run}"
    with sync_channel(lending.address, tls) as to_lending, sync_channel(risk.address, tls) as to_risk:
        products = lending_pb2_grpc.ProductServiceStub(to_lending)
        loans = lending_pb2_grpc.LoanServiceStub(to_lending)
        [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == PRODUCT]
        draft = products.SaveDraft(lpb.SaveDraftRequest(parameters=parameters), timeout=10)
        product = products.PublishProduct(lpb.ProductRef(code=draft.code, version=draft.version), timeout=10)
        print(f"product {product.code} v{product.version}: {product.parameters.name}")

        application = rpb.DecideRequest(
            application_id=f"app{run}",
            product=PRODUCT,
            customer=customer,
            amount_requested_fen=5_000_000,
            fields={k: float(v) for k, v in APPLICANT.items()},
        )
        decision = risk_pb2_grpc.DecisionServiceStub(to_risk).Decide(application, timeout=30)
        scores = ", ".join(f"{s.model} v{s.version} {s.score:.3f}" for s in decision.scores)
        print(
            f"decision on {application.application_id}: {rpb.Outcome.Name(decision.outcome)}, limit "
            f"{_fen(decision.limit_fen)} at {decision.price_bps / 100:.2f}% ({scores}; reasons "
            f"{list(decision.reason_codes)}); credit line {decision.credit_line_id or '-'} opened in the lending"
            f" service: {decision.credit_line_opened}"
        )
        if not decision.credit_line_opened:
            raise SystemExit(f"the demo's applicant was not approved with a credit line: {decision}")
        loan = loans.Drawdown(
            lpb.DrawdownRequest(
                customer=customer, loan_id=f"d{run}", product_code=PRODUCT, amount=3_000_000, date="2026-01-15"
            ),
            timeout=30,
        )
        first = loan.schedule[0]
        print(
            f"loan {loan.loan_id}: {_fen(loan.principal)} over {loan.term_months} months at "
            f"{loan.annual_rate_bps / 100:.2f}%, first instalment {_fen(first.principal + first.interest + first.fees)}"
            f" due {first.due}"
        )
        paid = loans.Repay(
            lpb.RepayRequest(
                loan_id=loan.loan_id,
                repayment_id=f"r{run}",
                amount=first.principal + first.interest + first.fees,
                date=first.due,
            ),
            timeout=30,
        ).repayment
        print(
            f"repaid {_fen(paid.amount)} on {paid.date}: principal {_fen(paid.principal)}, interest "
            f"{_fen(paid.interest)}, fees {_fen(paid.fees)}"
        )
        assessed = risk_pb2_grpc.BehaviourServiceStub(to_risk).Assess(
            rpb.AssessRequest(
                run_id=f"demo{run}",
                date="2026-02-20",
                borrowers=[rpb.Borrower(customer=customer, profile=PROFILE)],
            ),
            timeout=30,
        )
        [assessment] = assessed.assessments
        from_records = {k: v for k, v in assessment.features.items() if k not in PROFILE}
        print(
            f"behaviour as of {assessment.date}: {assessment.action} ({assessment.warning_level}; reasons "
            f"{list(assessment.reason_codes)}), from repayment records {json.dumps(from_records, sort_keys=True)}"
        )
    return customer
