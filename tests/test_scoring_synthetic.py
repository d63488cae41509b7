"""The synthetic small-business generator: deterministic for a seed, with a learnable ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoring import datasets, metrics, synthetic, train


def test_same_seed_gives_the_same_rows_and_another_seed_does_not() -> None:
    first, again, other = (
        synthetic.generate(2_000, seed=1),
        synthetic.generate(2_000, seed=1),
        synthetic.generate(2_000, seed=2),
    )
    assert np.array_equal(first.features, again.features) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.features, other.features)
    assert first.features.dtype == np.float32 and first.features.shape == (2_000, len(synthetic.FEATURES))


def test_ground_truth_separates_and_a_catboost_model_learns_it(tmp_path: Path) -> None:
    data = synthetic.generate(8_000, seed=3)
    assert 0.03 < data.labels.mean() < 0.2
    assert metrics.auc(data.labels, data.probabilities) > 0.7
    dataset = datasets.early_warning(rows=8_000, seed=3)
    outcome = train.train_one("early_warning", dataset, tmp_path, 1, iterations=60)
    assert outcome.admitted
    assert outcome.metadata["metrics"]["auc"] > 0.65
