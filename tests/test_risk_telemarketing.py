"""Telemarketing allocation: the plan that maximises expected conversions, its lift over random
calling (pure, on fixtures), and `yunkai risk telemarketing` on a real marketing_response model."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.local import ScoringProcess
from risk.telemarketing import Agent, Prospect, allocate, parse_agents, rank, realised
from scoring import datasets, train

ROOT = Path(__file__).resolve().parent.parent


def prospects(*probabilities: float) -> list[Prospect]:
    return [Prospect(f"p{i}", p) for i, p in enumerate(probabilities)]


def test_the_best_prospects_are_called_and_equal_agents_share_them() -> None:
    plan = allocate(prospects(0.1, 0.5, 0.3, 0.9, 0.2), [Agent("a", 2), Agent("b", 1)])
    assert plan.calls == {"a": ["p3", "p2"], "b": ["p1"]}
    assert plan.expected_conversions == pytest.approx(0.9 + 0.5 + 0.3)
    assert plan.random_expected_conversions == pytest.approx(3 * 0.4)
    assert plan.lift == pytest.approx(1.7 / 1.2)


def test_skilled_agents_get_the_likeliest_prospects_and_no_other_plan_does_better() -> None:
    people = prospects(0.8, 0.1, 0.4, 0.6)
    agents = [Agent("junior", 2, 0.5), Agent("senior", 1, 1.5)]
    plan = allocate(people, agents)
    assert plan.calls == {"junior": ["p3", "p2"], "senior": ["p0"]}
    slots = [0.5, 0.5, 1.5]
    best = max(
        sum(p.probability * s for p, s in zip(chosen, slots, strict=True))
        for chosen in itertools.permutations(people, 3)
    )
    assert plan.expected_conversions == pytest.approx(best)


def test_more_capacity_than_prospects_calls_everyone_once_and_lift_is_one() -> None:
    plan = allocate(prospects(0.2, 0.4), [Agent("a", 5)])
    assert plan.calls == {"a": ["p1", "p0"]}
    assert plan.lift == pytest.approx(1.0)
    assert allocate([], [Agent("a", 3)]).lift == 0.0
    assert allocate(prospects(0.5), [Agent("a", 0)]).calls == {"a": []}


def test_ties_are_broken_by_id_so_plans_are_reproducible() -> None:
    assert [p.id for p in rank(prospects(0.3, 0.3, 0.3))] == ["p0", "p1", "p2"]


def test_the_back_test_counts_real_conversions_against_the_base_rate() -> None:
    people = [
        Prospect("x", 0.9, True),
        Prospect("y", 0.8, False),
        Prospect("z", 0.1, False),
        Prospect("w", 0.05, False),
    ]
    outcome = realised(allocate(people, [Agent("a", 2)]), people)
    assert outcome == {"called": 2, "conversions": 1, "random_expected_conversions": 0.5, "lift": 2.0}


@pytest.mark.parametrize("text", ["a", "a:x", "a:-1", ":3", "a:3,a:4", "a:3:nan"])
def test_bad_agent_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--agents"):
        parse_agents(text)


def test_yunkai_risk_telemarketing_ranks_real_prospects_with_lift_over_random(tmp_path: Path) -> None:
    data = datasets.marketing_response()
    registry = tmp_path / "models"
    # The recipe learns slowly (learning rate 0.02): a few hundred trees before its scores spread out.
    assert train.train_one("marketing_response", data, registry, 1, iterations=400).admitted
    lines = []
    for i, row in enumerate(data.features[:1000]):
        features = dict(zip(data.feature_names, map(float, row), strict=True))
        lines.append(json.dumps({"id": f"p{i}", "converted": bool(data.labels[i])} | features))
    (tmp_path / "prospects.jsonl").write_text("\n".join(lines) + "\n")
    server = ScoringProcess(str(registry), ["--log-level", "WARNING"]).start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "risk", "telemarketing", "--scoring", server.address,
             "--prospects", str(tmp_path / "prospects.jsonl"), "--agents", "ann:40,bo:40,cy:20"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [len(report["calls"][a]) for a in ("ann", "bo", "cy")] == [40, 40, 20]
    assert report["lift"] > 1.5  # ~6% buy; the model's top tenth expects several times that
    assert report["realised"]["called"] == 100
