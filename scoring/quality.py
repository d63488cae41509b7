"""The quality gate: a new version of a model is admitted to the registry only if its AUC on
held-out rows is at least the champion's (the version DIR/<name>/roles.json records, the
newest admitted one when there is no record: scoring/champion.py) on the same rows, less
AUC_TOLERANCE. It runs after the parity gate; both must pass for anything to be written.

Same rows: both models are scored (by their ONNX files, as served) on the rows that neither
trained on. When the champion was trained on the same data, its training rows are known from
its recorded split (seed, test fraction) and the data's fingerprint, so the comparison uses
the candidate's held-out rows that the champion held out too. When the data changed, the
champion's training rows cannot be told apart: all of the candidate's held-out rows are used
and the champion's AUC may be flattering, which errs on the side of keeping the champion.

AUC_TOLERANCE = 0.01. Retraining the same recipe on the same rows with other CatBoost seeds
moved credit_risk's held-out AUC over a range of 0.006 (0.8391-0.8452, six seeds:
`yunkai scoring evaluate --retrain-seeds 5`, docs/models.md), so a gate much stricter would
refuse a retrain of equal quality by chance. (Its seed-bagged recipe, five seeds averaged in
each model, narrowed that to 0.002: 0.8436-0.8456.) marketing_response (87 buyers held out) ranged
0.0103 (0.7754-0.7857): there a retrain of equal quality may now and then be refused. The
held-out AUC's own standard error is about 0.015 on credit_risk's 1,114 rows (Hanley-McNeil),
so smaller losses cannot be told from noise; a far worse model (credit_risk capped at 3 trees:
0.7815 against 0.8391) is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import metrics, parity, registry

AUC_TOLERANCE = 0.01
SHARED_ROWS_MIN = 100  # fewer rows held out by both models make the comparison too noisy to trust
SHARED_POSITIVES_MIN = 10


@dataclass(frozen=True)
class QualityResult:
    passed: bool
    champion_version: int | None  # None: no champion, the first version is admitted on parity alone
    champion_auc: float | None
    candidate_auc: float | None
    tolerance: float
    rows_compared: int
    rows: str  # which rows were compared
    reason: str  # why it failed, or "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    labels: npt.ArrayLike,
    champion_scores: npt.ArrayLike,
    candidate_scores: npt.ArrayLike,
    champion_version: int,
    rows: str,
    tolerance: float = AUC_TOLERANCE,
) -> QualityResult:
    """Admit the candidate if its AUC on these rows is at least the champion's less `tolerance`."""
    y = np.asarray(labels).astype(np.int64).ravel()
    positives = int(y.sum())
    if len(y) < SHARED_ROWS_MIN or positives < SHARED_POSITIVES_MIN or positives == len(y):
        reason = (
            f"only {len(y)} held-out rows ({positives} positive) to compare with champion v{champion_version}; "
            f"need {SHARED_ROWS_MIN} rows and {SHARED_POSITIVES_MIN} of each class"
        )
        return QualityResult(False, champion_version, None, None, tolerance, len(y), rows, reason)
    champion_auc = metrics.auc(y, champion_scores)
    candidate_auc = metrics.auc(y, candidate_scores)
    passed = candidate_auc >= champion_auc - tolerance
    reason = (
        "ok"
        if passed
        else f"candidate AUC {candidate_auc:.4f} < champion v{champion_version} AUC {champion_auc:.4f} "
        f"- tolerance {tolerance:g} on {len(y)} held-out rows"
    )
    return QualityResult(passed, champion_version, champion_auc, candidate_auc, tolerance, len(y), rows, reason)


def no_champion() -> QualityResult:
    return QualityResult(True, None, None, None, AUC_TOLERANCE, 0, "none: no champion yet", "ok")


def champion_input_names(metadata: dict[str, Any]) -> list[str]:
    return [feature["name"] for feature in metadata["input_schema"]["features"]]


def champion_scores(root: Path, name: str, version: int, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The champion's probabilities for raw feature rows, from its ONNX file as the server runs it."""
    return parity.onnx_probabilities(parity.open_session(registry.model_path(root, name, version)), features)
