"""Decision flows: one per product and version, a JSON decision model (JDM) evaluated by zen-engine.

A flow is the file `risk/flows/<product>/<version>.json`: a JDM graph (edited in GoRules' JDM
editor, evaluated by `zen-engine`; we write no rule engine) plus a `yunkai` section that zen
ignores and we read: the models the flow pins (name and version), the application fields with
their valid ranges and missing-data policy, and the range of the amount requested. Published
flows are immutable: a policy change is a new version file, and each decision stores the
sha256 of the file it ran, so a replay can prove it ran the same table.

The protocol of one decision (pure functions here; the server does the I/O in between):

1. `prepare(flow, amount_requested_fen, fields)` checks the application against the flow:
   - an unknown field, a non-finite value, a value outside [min, max], or a missing field
     whose policy is "reject" -> `BadApplication` naming the field (INVALID_ARGUMENT);
   - a missing field whose policy is "refer" -> the field is listed in `missing` and the
     models that need it are not scored (their score is absent); the table refers the
     application with reason code MISSING_<FIELD>.
   It returns the rows to score, model by model (features named as the model names them).
2. The server scores them on the scoring server, pinned to each model's version.
3. `context(...)` builds the table's input: {"application": fields + amount_requested_fen,
   "scores": {model: probability}, "missing": [field, ...]}. This context is what a decision
   stores; it is everything the table reads.
4. `evaluate(flow, context)` runs the table and checks its output: decision in approve /
   decline / refer, integer limit (fen) and price (annual basis points), reason codes; an
   approval has a positive limit, a decline or referral a zero one. A table that breaks this
   raises `FlowError` (a bug in the policy, never silently accepted).

Replay is step 4 again on the stored context with the stored flow version: the same file and
the same context give the same output, because zen-engine computes in decimals, deterministically.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zen

FLOWS_DIR = Path(__file__).resolve().parent / "flows"
PRODUCT_PATTERN = re.compile(r"[A-Z][A-Z0-9-]{1,23}")
DECISIONS = ("approve", "decline", "refer")
MISSING_POLICIES = ("reject", "refer")
REASONS_MAX = 16


class BadApplication(ValueError):
    """The application is malformed for this flow; the message starts with the field's name."""


class FlowNotFound(LookupError):
    """No such product, or no such version of its flow."""


class FlowError(RuntimeError):
    """The flow file or its table is broken: a policy bug, not the applicant's fault."""


@dataclass(frozen=True)
class FieldRule:
    minimum: float
    maximum: float
    missing: str  # "reject" or "refer"


@dataclass(frozen=True)
class ModelPin:
    name: str
    version: int


@dataclass(frozen=True)
class Outcome:
    """What the table decided."""

    decision: str
    limit_fen: int
    price_bps: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Flow:
    product: str
    version: int
    sha256: str
    models: tuple[ModelPin, ...]
    fields: dict[str, FieldRule]
    amount_min_fen: int
    amount_max_fen: int
    decision: Any  # the compiled zen.ZenDecision


@dataclass(frozen=True)
class Prepared:
    """An application checked against its flow: what to score, and what is missing."""

    fields: dict[str, float]
    missing: tuple[str, ...]
    rows: dict[str, dict[str, float]]  # model name -> its feature row (models with every feature present)


_ENGINE = zen.ZenEngine()


def parse(text: str, product: str, version: int) -> Flow:
    """A flow from its file's text; FlowError if the `yunkai` section or the JDM is malformed."""
    try:
        document = json.loads(text)
        meta = document["yunkai"]
        if meta["product"] != product or meta["version"] != version:
            raise FlowError(f"flow {product} v{version}: its yunkai section says {meta['product']} v{meta['version']}")
        models = tuple(ModelPin(str(m["name"]), int(m["version"])) for m in meta["models"])
        fields = {
            str(name): FieldRule(float(rule["min"]), float(rule["max"]), str(rule["missing"]))
            for name, rule in meta["fields"].items()
        }
        amount = meta["amount_requested_fen"]
        amount_min, amount_max = int(amount["min"]), int(amount["max"])
    except (KeyError, TypeError, ValueError) as error:
        raise FlowError(f"flow {product} v{version}: malformed yunkai section: {error!r}") from None
    for name, rule in fields.items():
        if rule.missing not in MISSING_POLICIES or not rule.minimum <= rule.maximum:
            raise FlowError(f"flow {product} v{version}: field {name}: bad range or missing policy")
    if not 0 < amount_min <= amount_max:
        raise FlowError(f"flow {product} v{version}: bad amount_requested_fen range")
    try:
        # Precompiled content: about 10% faster evaluations than a decision made from the raw text.
        decision = _ENGINE.create_decision(zen.ZenDecisionContent(text))
        decision.validate()
    except Exception as error:  # zen raises plain exceptions carrying its own message
        raise FlowError(f"flow {product} v{version}: the JDM does not load: {error}") from None
    return Flow(
        product=product,
        version=version,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        models=models,
        fields=fields,
        amount_min_fen=amount_min,
        amount_max_fen=amount_max,
        decision=decision,
    )


class Flows:
    """The flows under a folder, loaded on first use and kept (files are immutable once published)."""

    def __init__(self, root: Path = FLOWS_DIR) -> None:
        self.root = root
        self.loaded: dict[tuple[str, int], Flow] = {}

    def versions(self, product: str) -> list[int]:
        if not PRODUCT_PATTERN.fullmatch(product):
            raise BadApplication(f"product: {product!r} is not a product code")
        folder = self.root / product
        if not folder.is_dir():
            return []
        return sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())

    def get(self, product: str, version: int | None = None) -> Flow:
        """The flow of `product` at `version`, or its newest version when None."""
        versions = self.versions(product)
        if not versions:
            raise FlowNotFound(f"product: no decision flow for {product}")
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise FlowNotFound(f"flow_version: {product} has no flow version {chosen} (has {versions})")
        key = (product, chosen)
        if key not in self.loaded:
            self.loaded[key] = parse((self.root / product / f"{chosen}.json").read_text(), product, chosen)
        return self.loaded[key]


def prepare(
    flow: Flow, amount_requested_fen: int, fields: dict[str, float], model_features: dict[str, list[str]]
) -> Prepared:
    """Check an application against `flow` (see the module's protocol, step 1).

    `model_features` names each pinned model's features (from the scoring server's metadata).
    """
    if not flow.amount_min_fen <= amount_requested_fen <= flow.amount_max_fen:
        raise BadApplication(
            f"amount_requested_fen: {amount_requested_fen} is outside "
            f"[{flow.amount_min_fen}, {flow.amount_max_fen}] for {flow.product}"
        )
    for name in sorted(fields):
        rule = flow.fields.get(name)
        if rule is None:
            raise BadApplication(f"{name}: not a field of {flow.product} v{flow.version}")
        value = fields[name]
        if not math.isfinite(value):
            raise BadApplication(f"{name}: {value} is not a finite number")
        if not rule.minimum <= value <= rule.maximum:
            raise BadApplication(f"{name}: {value:g} is outside [{rule.minimum:g}, {rule.maximum:g}]")
    missing = []
    for name, rule in sorted(flow.fields.items()):
        if name not in fields:
            if rule.missing == "reject":
                raise BadApplication(f"{name}: missing, and {flow.product} v{flow.version} requires it")
            missing.append(name)
    rows = {}
    for pin in flow.models:
        names = model_features[pin.name]
        unknown = [n for n in names if n not in flow.fields]
        if unknown:
            raise FlowError(f"flow {flow.product} v{flow.version}: model {pin.name} needs undeclared {unknown}")
        if all(n in fields for n in names):
            rows[pin.name] = {n: fields[n] for n in names}
    return Prepared(dict(fields), tuple(missing), rows)


def context(amount_requested_fen: int, prepared: Prepared, scores: dict[str, float]) -> dict[str, Any]:
    """The table's whole input (the module's protocol, step 3)."""
    return {
        "application": {**prepared.fields, "amount_requested_fen": amount_requested_fen},
        "scores": dict(scores),
        "missing": list(prepared.missing),
    }


def evaluate(flow: Flow, table_input: dict[str, Any]) -> Outcome:
    """Run the flow's table on `table_input` and check what it decided (the protocol, step 4)."""
    try:
        result = flow.decision.evaluate(table_input)["result"]
    except Exception as error:
        raise FlowError(f"flow {flow.product} v{flow.version}: evaluation failed: {error}") from None
    where = f"flow {flow.product} v{flow.version} on {json.dumps(table_input, sort_keys=True)}"
    decision, limit, price, reasons = (result.get(k) for k in ("decision", "limit_fen", "price_bps", "reasons"))
    if decision not in DECISIONS:
        raise FlowError(f"{where}: decision {decision!r} (no rule matched, or a bad output)")
    for name, value in (("limit_fen", limit), ("price_bps", price)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FlowError(f"{where}: {name} {value!r} is not a non-negative integer")
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons) or len(reasons) > REASONS_MAX:
        raise FlowError(f"{where}: reasons {reasons!r} is not a short list of codes")
    assert isinstance(limit, int) and isinstance(price, int)
    if (decision == "approve") != (limit > 0):
        raise FlowError(f"{where}: {decision} with limit {limit}: approvals and only approvals carry a limit")
    return Outcome(str(decision), limit, price, tuple(reasons))
