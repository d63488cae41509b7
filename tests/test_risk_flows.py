"""Decision tables on fixtures (no servers): SME-TAX-LOAN v1's outcomes, boundaries, caps and
missing data (kept for replaying its decisions); v2, the newest, which decides within the
product's bounds; and the flows derived for every other product of the catalogue
(risk/derive.py): all there, up to date, and approving only within their product's limits
and rates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lending.loans import BadLoanRequest, line_rate
from lending.products import SAMPLE_CATALOGUE, read_catalogue
from proto import lending_pb2
from risk import derive, flow

PRODUCT = "SME-TAX-LOAN"
CREDIT_RISK_FEATURES = [
    "Seniority", "Home", "Time", "Age", "Marital", "Records", "Job",
    "Expenses", "Income", "Assets", "Debt", "Amount", "Price",
]  # fmt: skip
MODELS = {"credit_risk": CREDIT_RISK_FEATURES}
APPLICANT = {
    "Seniority": 9.0, "Home": 5.0, "Time": 60.0, "Age": 30.0, "Marital": 1.0, "Records": 0.0, "Job": 1.0,
    "Expenses": 73.0, "Income": 129.0, "Assets": 0.0, "Debt": 0.0, "Amount": 800.0, "Price": 846.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def table() -> flow.Flow:
    return flow.Flows().get(PRODUCT, 1)


def decide(table: flow.Flow, pd: float, amount_fen: int = 5_000_000, **fields: float) -> flow.Outcome:
    prepared = flow.prepare(table, amount_fen, APPLICANT | fields, MODELS)
    return flow.evaluate(table, flow.context(amount_fen, prepared, {"credit_risk": pd}))


def test_the_flow_pins_its_model_versions_and_is_the_newest(table: flow.Flow) -> None:
    assert table.models == (flow.ModelPin("credit_risk", 1),)
    assert flow.Flows().get(PRODUCT).version == 2
    assert flow.Flows().get(PRODUCT).models == table.models
    assert len(table.sha256) == 64


def test_low_risk_is_approved_at_the_amount_asked_with_a_risk_priced_rate(table: flow.Flow) -> None:
    assert decide(table, 0.05) == flow.Outcome("approve", 5_000_000, 800, ("LOW_DEFAULT_RISK",))


def test_medium_risk_is_approved_with_a_lower_cap_and_a_higher_price(table: flow.Flow) -> None:
    assert decide(table, 0.2) == flow.Outcome("approve", 5_000_000, 2100, ("MEDIUM_DEFAULT_RISK",))
    capped = decide(table, 0.2, amount_fen=30_000_000)
    assert capped == flow.Outcome("approve", 20_000_000, 2100, ("MEDIUM_DEFAULT_RISK", "LIMIT_CAPPED"))


def test_high_risk_is_declined_and_borderline_risk_referred(table: flow.Flow) -> None:
    assert decide(table, 0.9) == flow.Outcome("decline", 0, 0, ("HIGH_DEFAULT_RISK",))
    assert decide(table, 0.35) == flow.Outcome("refer", 0, 0, ("BORDERLINE_DEFAULT_RISK",))


def test_cut_offs_are_inclusive_on_the_stricter_side(table: flow.Flow) -> None:
    assert decide(table, 0.5).decision == "decline"
    assert decide(table, 0.4999).decision == "refer"
    assert decide(table, 0.3).decision == "refer"
    assert decide(table, 0.1).reasons == ("MEDIUM_DEFAULT_RISK",)
    assert decide(table, 0.0999).reasons == ("LOW_DEFAULT_RISK",)


def test_adverse_records_decline_moderate_risk_that_would_otherwise_pass(table: flow.Flow) -> None:
    assert decide(table, 0.27, Records=1.0) == flow.Outcome(
        "decline", 0, 0, ("ADVERSE_RECORDS", "ELEVATED_DEFAULT_RISK")
    )
    assert decide(table, 0.27).decision == "approve"
    assert decide(table, 0.05, Records=1.0).decision == "approve"


def test_an_amount_above_automatic_authority_is_referred_whatever_the_risk(table: flow.Flow) -> None:
    assert decide(table, 0.01, amount_fen=100_000_001).reasons == ("AMOUNT_ABOVE_AUTOMATIC_AUTHORITY",)
    assert decide(table, 0.01, amount_fen=100_000_000) == flow.Outcome(
        "approve", 50_000_000, 640, ("LOW_DEFAULT_RISK", "LIMIT_CAPPED")
    )


def test_missing_data_the_policy_refers_is_referred_naming_each_field(table: flow.Flow) -> None:
    fields = {k: v for k, v in APPLICANT.items() if k not in ("Income", "Debt")}
    prepared = flow.prepare(table, 5_000_000, fields, MODELS)
    assert prepared.missing == ("Debt", "Income")
    assert prepared.rows == {}  # credit_risk cannot be scored without them: no score is made up
    outcome = flow.evaluate(table, flow.context(5_000_000, prepared, {}))
    assert outcome == flow.Outcome("refer", 0, 0, ("MISSING_DEBT", "MISSING_INCOME"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Age": None}, "Age: missing, and SME-TAX-LOAN v1 requires it"),
        ({"Age": 17.0}, "Age: 17 is outside [18, 100]"),
        ({"Records": 2.0}, "Records: 2 is outside [-1, 1]"),
        ({"Income": float("nan")}, "Income: nan is not a finite number"),
        ({"Income": float("inf")}, "Income: inf is not a finite number"),
        ({"Shoe size": 42.0}, "Shoe size: not a field of SME-TAX-LOAN v1"),
    ],
)
def test_bad_application_data_is_refused_naming_the_field(
    table: flow.Flow, change: dict[str, float | None], message: str
) -> None:
    fields: dict[str, Any] = {k: v for k, v in (APPLICANT | change).items() if v is not None}
    with pytest.raises(flow.BadApplication) as refused:
        flow.prepare(table, 5_000_000, fields, MODELS)
    assert str(refused.value) == message


@pytest.mark.parametrize("amount", [0, 99_999, 1_000_000_001])
def test_an_amount_outside_the_product_range_is_refused(table: flow.Flow, amount: int) -> None:
    with pytest.raises(flow.BadApplication, match=r"^amount_requested_fen: "):
        flow.prepare(table, amount, APPLICANT, MODELS)


def test_unknown_products_and_versions_are_not_found() -> None:
    with pytest.raises(flow.FlowNotFound, match=r"^product: "):
        flow.Flows().get("SME-NOTHING")
    with pytest.raises(flow.FlowNotFound, match=r"^flow_version: "):
        flow.Flows().get(PRODUCT, 99)
    with pytest.raises(flow.BadApplication, match=r"^product: "):
        flow.Flows().get("../etc")


def test_a_table_whose_output_breaks_the_contract_is_a_flow_error(tmp_path: Path, table: flow.Flow) -> None:
    document = json.loads((flow.FLOWS_DIR / PRODUCT / "1.json").read_text())
    rules = document["nodes"][1]["content"]["rules"]
    rules[-1]["limit"] = "application.amount_requested_fen / 3"  # a fraction of a fen
    (tmp_path / PRODUCT).mkdir()
    (tmp_path / PRODUCT / "1.json").write_text(json.dumps(document))
    broken = flow.Flows(tmp_path).get(PRODUCT, 1)
    with pytest.raises(flow.FlowError, match="limit_fen"):
        decide(broken, 0.2, amount_fen=5_000_000 - 1)
    assert broken.sha256 != table.sha256


def test_the_same_input_gives_the_same_output(table: flow.Flow) -> None:
    prepared = flow.prepare(table, 7_654_321, APPLICANT, MODELS)
    stored = json.dumps(flow.context(7_654_321, prepared, {"credit_risk": 0.123456789}), sort_keys=True)
    first = flow.evaluate(table, json.loads(stored))
    assert all(flow.evaluate(flow.Flows().get(PRODUCT, 1), json.loads(stored)) == first for _ in range(5))


# --- v2: within the product's bounds ----------------------------------------------------------


@pytest.fixture(scope="module")
def newest() -> flow.Flow:
    return flow.Flows().get(PRODUCT)


def test_v2_prices_from_the_products_lowest_rate_up_with_the_risk(newest: flow.Flow) -> None:
    assert newest.version == 2
    assert decide(newest, 0.0) == flow.Outcome("approve", 5_000_000, 430, ("LOW_DEFAULT_RISK",))
    assert decide(newest, 0.05) == flow.Outcome("approve", 5_000_000, 580, ("LOW_DEFAULT_RISK",))
    assert decide(newest, 0.2) == flow.Outcome("approve", 5_000_000, 1030, ("MEDIUM_DEFAULT_RISK",))
    assert decide(newest, 0.2999).price_bps == 1180
    assert decide(newest, 0.3).decision == "refer"
    # v1 priced the same applicant at 21.00%, outside the product's 4.30-12.00%.
    assert decide(flow.Flows().get(PRODUCT, 1), 0.2).price_bps == 2100


def test_v2_refuses_a_request_below_the_products_smallest_amount(newest: flow.Flow) -> None:
    with pytest.raises(flow.BadApplication, match=r"^amount_requested_fen: 999999 "):
        flow.prepare(newest, 999_999, APPLICANT, MODELS)
    assert decide(newest, 0.05, amount_fen=1_000_000).limit_fen == 1_000_000


def test_every_products_newest_flow_approves_only_within_the_products_bounds() -> None:
    """Over a grid of scores, amounts and adverse records: a limit within the product's
    amount_min..amount_max and a price the lending service takes for a credit line of it
    (within its rate bounds; a fixed-rate product's one rate), for each product with a flow."""
    flows = flow.Flows()
    products = {p.code: p for p in read_catalogue(SAMPLE_CATALOGUE)}
    checked = 0
    for code in sorted(products):
        if not flows.versions(code):
            continue
        table = flows.get(code)
        p = products[code]
        amounts = sorted({table.amount_min_fen, p.amount_min, 5_000_000, 30_000_000, 100_000_000, table.amount_max_fen})
        for amount in (a for a in amounts if table.amount_min_fen <= a <= table.amount_max_fen):
            for records in (0.0, 1.0):
                for step in (*range(0, 1000, 13), 99, 100, 249, 250, 299):
                    outcome = decide(table, step / 1000, amount_fen=amount, Records=records)
                    if outcome.decision != "approve":
                        continue
                    checked += 1
                    where = f"{code} v{table.version} at pd {step / 1000}, {amount} fen: {outcome}"
                    assert p.amount_min <= outcome.limit_fen <= p.amount_max, where
                    assert line_rate(p, outcome.price_bps) == outcome.price_bps, where  # lending takes it
    assert checked > 22 * 100  # the grid reached approvals of every product's flow


def catalogue() -> dict[str, lending_pb2.ProductParameters]:
    return {p.code: p for p in read_catalogue(SAMPLE_CATALOGUE)}


def test_every_product_of_the_catalogue_has_its_flow_and_none_is_stale() -> None:
    products = catalogue()
    assert len(products) == 22
    assert all(flow.Flows().versions(code) for code in products), "a product without a flow"
    assert derive.plan(list(products.values()), flow.FLOWS_DIR) == []  # `yunkai risk derive-flows --check`


def test_a_derived_flow_follows_its_products_bounds() -> None:
    table = flow.Flows().get("SME-GREEN")  # 100,000-10,000,000 CNY, 3.30-6.50%
    assert (table.amount_min_fen, table.amount_max_fen) == (10_000_000, 1_000_000_000)
    assert decide(table, 0.0, amount_fen=10_000_000) == flow.Outcome("approve", 10_000_000, 330, ("LOW_DEFAULT_RISK",))
    assert decide(table, 0.0999, amount_fen=300_000_000) == flow.Outcome(
        "approve", 166_666_666, 458, ("LOW_DEFAULT_RISK", "LIMIT_CAPPED")
    )
    assert decide(table, 0.2, amount_fen=50_000_000).price_bps == 554  # 458 + (0.2 - 0.1) x 5 x 192
    assert decide(table, 0.2999, amount_fen=50_000_000).price_bps == 650
    assert decide(table, 0.1, amount_fen=400_000_000).reasons == ("AMOUNT_ABOVE_AUTOMATIC_AUTHORITY",)
    assert decide(table, 0.35, amount_fen=50_000_000).decision == "refer"
    with pytest.raises(flow.BadApplication, match=r"^amount_requested_fen: "):
        flow.prepare(table, 9_999_999, APPLICANT, MODELS)
    # A fixed-rate product: every approval at its one rate.
    fixed = flow.Flows().get("SME-STARTUP-GUAR")
    assert {decide(fixed, pd, amount_fen=2_000_000).price_bps for pd in (0.0, 0.05, 0.15, 0.29)} == {345}
    with pytest.raises(BadLoanRequest, match="does not let a loan choose"):
        line_rate(catalogue()["SME-STARTUP-GUAR"], 346)


def test_changed_terms_make_a_new_flow_version_and_hand_written_flows_stay(tmp_path: Path) -> None:
    products = catalogue()
    green, tax = products["SME-GREEN"], products["SME-TAX-LOAN"]
    for code in ("SME-GREEN", "SME-TAX-LOAN"):
        (tmp_path / code).mkdir()
        for source in (flow.FLOWS_DIR / code).glob("*.json"):
            (tmp_path / code / source.name).write_text(source.read_text())
    assert derive.plan([green, tax], tmp_path) == []
    green.annual_rate_bps_max = 700
    tax.annual_rate_bps_max = 1300  # hand-written: its author's to follow, never overwritten
    [(path, text, why)] = derive.plan([green, tax], tmp_path)
    assert path == tmp_path / "SME-GREEN" / "2.json" and why == "SME-GREEN's terms changed since v1"
    path.write_text(text)
    newer = flow.Flows(tmp_path).get("SME-GREEN")
    assert newer.version == 2 and decide(newer, 0.2999, amount_fen=50_000_000).price_bps == 700
    assert derive.plan([green, tax], tmp_path) == []
