"""Decision flows derived from a product's parameters: `yunkai risk derive-flows`.

Every product of the catalogue gets a flow (risk/flow.py's format) without a policy author
writing one by hand; a hand-written flow (one without `derived_from`) is the author's and is
never replaced. The policy template, for a product P with amounts amount_min..amount_max and
rates rate_min..rate_max (fixed-rate products: rate_min = rate_max = its annual_rate_bps):

  model        credit_risk v1 (the application model), scored on the credit data's fields
               (CREDIT_FIELDS: their valid ranges; Income, Assets and Debt missing refer)
  eligibility  amount_requested_fen within P's amount_min..amount_max (else INVALID_ARGUMENT)
  rules        first hit, the cut-offs of SME-TAX-LOAN's hand-written policy:
                 missing data                  refer    MISSING_<FIELD>
                 pd >= 0.5                     decline  HIGH_DEFAULT_RISK
                 pd >= 0.25 with a record      decline  ADVERSE_RECORDS, ELEVATED_DEFAULT_RISK
                 pd >= 0.3                     refer    BORDERLINE_DEFAULT_RISK
                 amount > AUTHORITY            refer    AMOUNT_ABOVE_AUTOMATIC_AUTHORITY
                 pd < 0.1                      approve  limit min(amount, LOW_CAP), LOW_DEFAULT_RISK
                 otherwise (0.1 <= pd < 0.3)   approve  limit min(amount, MEDIUM_CAP), MEDIUM_DEFAULT_RISK
               (LIMIT_CAPPED added when the cap cut the amount asked)
  caps         AUTHORITY = amount_max / 3, LOW_CAP = amount_max / 6, MEDIUM_CAP = amount_max / 15,
               each at least amount_min (SME-TAX-LOAN's 100, 50 and 20 million fen of 300 million)
  price        low risk: rate_min + pd x 10 x (MID - rate_min), below MID = rate_min + 40% of the
               span; medium: MID + (pd - 0.1) x 5 x (rate_max - MID), below rate_max. So every
               approval is priced within P's bounds and riskier applicants pay more.

Versions: a derived flow records in `derived_from` the parameters it was derived from. When
they change (a new product version with other bounds), the next run writes the next flow
version; published flow files are never rewritten (decisions store the sha256 of theirs).
`--check` writes nothing and exits 1 if a run would write something (the tests use it, so a
catalogue change cannot leave its flows behind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lending.products import SAMPLE_CATALOGUE, InvalidProduct, read_catalogue
from proto import lending_pb2
from risk import flow

MODEL = {"name": "credit_risk", "version": 1}
# The application form of credit_risk v1 (modeldata's credit_data columns, scoring/datasets.py).
CREDIT_FIELDS: dict[str, dict[str, Any]] = {
    "Seniority": {"min": 0, "max": 60, "missing": "reject"},
    "Home": {"min": -1, "max": 5, "missing": "reject"},
    "Time": {"min": 1, "max": 120, "missing": "reject"},
    "Age": {"min": 18, "max": 100, "missing": "reject"},
    "Marital": {"min": -1, "max": 4, "missing": "reject"},
    "Records": {"min": -1, "max": 1, "missing": "reject"},
    "Job": {"min": -1, "max": 3, "missing": "reject"},
    "Expenses": {"min": 0, "max": 1000, "missing": "reject"},
    "Income": {"min": 0, "max": 5000, "missing": "refer"},
    "Assets": {"min": 0, "max": 1000000, "missing": "refer"},
    "Debt": {"min": 0, "max": 1000000, "missing": "refer"},
    "Amount": {"min": 0, "max": 20000, "missing": "reject"},
    "Price": {"min": 0, "max": 50000, "missing": "reject"},
}
LOW_PD, REFER_PD, DECLINE_PD, RECORDS_PD = 0.1, 0.3, 0.5, 0.25
MID_SHARE = 0.4  # of the rate span: where low risk's prices end and medium risk's begin


def terms(p: lending_pb2.ProductParameters) -> dict[str, int]:
    """What a derived flow depends on: the product's amounts and rate bounds."""
    fixed = "annual_rate_bps" not in p.overridable
    return {
        "amount_min": p.amount_min,
        "amount_max": p.amount_max,
        "rate_min": p.annual_rate_bps if fixed else p.annual_rate_bps_min,
        "rate_max": p.annual_rate_bps if fixed else p.annual_rate_bps_max,
    }


def derive(p: lending_pb2.ProductParameters, version: int) -> dict[str, Any]:
    """The flow document of `p` at `version` (the module's template)."""
    t = terms(p)
    low, high = t["amount_min"], t["amount_max"]
    authority, low_cap, medium_cap = (max(low, high // n) for n in (3, 6, 15))
    rate_min, rate_max = t["rate_min"], t["rate_max"]
    mid = rate_min + int((rate_max - rate_min) * MID_SHARE)
    low_price = f"{rate_min} + round(scores.credit_risk * {10 * (mid - rate_min)})"
    medium_price = f"{mid} + round((scores.credit_risk - {LOW_PD}) * {5 * (rate_max - mid)})"
    amount = "application.amount_requested_fen"

    def rule(rule_id: str, **cells: str) -> dict[str, str]:
        row = {"_id": rule_id, "missing": "", "pd": "", "records": "", "amount": ""}
        return row | {"limit": "0", "price": "0"} | cells

    def capped(cap: int, reason: str) -> str:
        return f'{amount} > {cap} ? ["{reason}", "LIMIT_CAPPED"] : ["{reason}"]'

    rules = [
        rule("missing-data", missing="len($) > 0", decision='"refer"', reasons='map(missing, "MISSING_" + upper(#))'),
        rule("high-risk", pd=f">= {DECLINE_PD}", decision='"decline"', reasons='["HIGH_DEFAULT_RISK"]'),
        rule(
            "records-and-risk",
            pd=f">= {RECORDS_PD}",
            records="1",
            decision='"decline"',
            reasons='["ADVERSE_RECORDS", "ELEVATED_DEFAULT_RISK"]',
        ),
        rule("borderline", pd=f">= {REFER_PD}", decision='"refer"', reasons='["BORDERLINE_DEFAULT_RISK"]'),
        rule(
            "large-amount",
            amount=f"> {authority}",
            decision='"refer"',
            reasons='["AMOUNT_ABOVE_AUTOMATIC_AUTHORITY"]',
        ),
        rule(
            "low-risk",
            pd=f"< {LOW_PD}",
            decision='"approve"',
            limit=f"min([{amount}, {low_cap}])",
            price=low_price,
            reasons=capped(low_cap, "LOW_DEFAULT_RISK"),
        ),
        rule(
            "medium-risk",
            decision='"approve"',
            limit=f"min([{amount}, {medium_cap}])",
            price=medium_price,
            reasons=capped(medium_cap, "MEDIUM_DEFAULT_RISK"),
        ),
    ]
    return {
        "yunkai": {
            "product": p.code,
            "version": version,
            "description": f"Derived from {p.code}'s parameters by risk/derive.py (its docstring has the template):"
            f" credit_risk v1 decides; limits up to {low_cap} fen (low risk) or {medium_cap} fen (medium risk),"
            f" above {authority} fen referred; prices {rate_min}-{rate_max} bps a year by risk.",
            "derived_from": t,
            "models": [MODEL],
            "amount_requested_fen": {"min": low, "max": high},
            "fields": CREDIT_FIELDS,
        },
        "contentType": "application/vnd.gorules.decision",
        "nodes": [
            {"id": "application", "type": "inputNode", "name": "Application and scores", "position": {"x": 0, "y": 0}},
            {
                "id": "policy",
                "type": "decisionTableNode",
                "name": f"{p.code} credit policy v{version} (derived)",
                "position": {"x": 300, "y": 0},
                "content": {
                    "hitPolicy": "first",
                    "inputs": [
                        {"id": "missing", "name": "Missing data", "field": "missing"},
                        {"id": "pd", "name": "Default risk (credit_risk)", "field": "scores.credit_risk"},
                        {"id": "records", "name": "Adverse records (1 = yes)", "field": "application.Records"},
                        {"id": "amount", "name": "Amount requested (fen)", "field": amount},
                    ],
                    "outputs": [
                        {"id": "decision", "name": "Decision", "field": "decision"},
                        {"id": "limit", "name": "Limit (fen)", "field": "limit_fen"},
                        {"id": "price", "name": "Price (annual bps)", "field": "price_bps"},
                        {"id": "reasons", "name": "Reason codes", "field": "reasons"},
                    ],
                    "rules": rules,
                },
            },
            {"id": "decision", "type": "outputNode", "name": "Decision", "position": {"x": 600, "y": 0}},
        ],
        "edges": [
            {"id": "application-policy", "sourceId": "application", "targetId": "policy", "type": "edge"},
            {"id": "policy-decision", "sourceId": "policy", "targetId": "decision", "type": "edge"},
        ],
    }


def text_of(document: dict[str, Any]) -> str:
    """A flow file's exact text (its sha256 is stored with every decision it makes)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def plan(products: list[lending_pb2.ProductParameters], flows_dir: Path) -> list[tuple[Path, str, str]]:
    """(file, text, why) of each flow version to write: a product without a flow gets v1; one
    whose newest flow was derived from other parameters gets the next version."""
    flows = flow.Flows(flows_dir)
    writes: list[tuple[Path, str, str]] = []
    for p in products:
        versions = flows.versions(p.code)
        if versions:
            newest = json.loads((flows_dir / p.code / f"{versions[-1]}.json").read_text())
            derived_from = newest["yunkai"].get("derived_from")
            if derived_from is None or derived_from == terms(p):
                continue  # hand-written (the author's), or derived from these very terms
            why = f"{p.code}'s terms changed since v{versions[-1]}"
        else:
            why = f"{p.code} had no flow"
        version = (versions[-1] if versions else 0) + 1
        document = derive(p, version)
        text = text_of(document)
        flow.parse(text, p.code, version)  # a broken template fails here, before any file is written
        writes.append((flows_dir / p.code / f"{version}.json", text, why))
    return writes


def main(args: argparse.Namespace) -> int:
    """`yunkai risk derive-flows [--catalogue FILE] [--flows-dir DIR] [--check]`."""
    catalogue, flows_dir = args.catalogue or SAMPLE_CATALOGUE, args.flows_dir or flow.FLOWS_DIR
    try:
        products = read_catalogue(catalogue)
    except (OSError, InvalidProduct) as error:
        print(f"yunkai risk derive-flows: {error}", file=sys.stderr)
        return 2
    writes = plan(products, flows_dir)
    for path, text, why in writes:
        if args.check:
            print(f"would write {path} ({why})")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path} ({why})")
    print(f"{len(products)} products, {len(writes)} flow versions {'to write' if args.check else 'written'}")
    return 1 if args.check and writes else 0
