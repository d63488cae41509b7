"""Telemarketing: rank prospects by `marketing_response` and allocate a day's calls across agents.

`allocate` (pure) maximises expected conversions. A call of prospect i by agent j converts
with probability p_i * s_j (the model's probability, times the agent's skill, 1.0 unless
known), each agent makes at most its daily capacity of calls, and each prospect is called at
most once. Expected conversions are a sum of products, so by the rearrangement inequality the
best plan pairs the highest probabilities with the highest-skill call slots: sort prospects
by p descending, sort slots by skill descending, match in order. Ties are broken by id, so a
plan is reproducible.

The lift is that plan's expected conversions over a random plan's (the same slots filled by
prospects drawn at random: each slot expects the mean probability). With labelled prospects
(`converted` known, as in a back-test), `realised` counts the conversions among those the plan
calls against what random calling expects from the base rate.

`yunkai risk telemarketing --scoring A --prospects FILE.jsonl --agents a1:40,a2:30[:1.2]`
scores the prospects (one JSON object a line: id, optional converted, model features) and
prints the plan and its lift as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import serving
from clients.scoring import BadScoringReply, ScoringClient

MODEL = "marketing_response"
PROSPECTS_MAX = 1_000_000
AGENTS_MAX = 10_000


@dataclass(frozen=True)
class Prospect:
    id: str
    probability: float
    converted: bool | None = None  # known only in a back-test


@dataclass(frozen=True)
class Agent:
    id: str
    capacity_calls: int
    skill: float = 1.0


@dataclass(frozen=True)
class Plan:
    calls: dict[str, list[str]]  # agent id -> prospect ids, best first
    expected_conversions: float
    random_expected_conversions: float

    @property
    def lift(self) -> float:
        return self.expected_conversions / self.random_expected_conversions if self.random_expected_conversions else 0.0


def rank(prospects: list[Prospect]) -> list[Prospect]:
    """Most likely to convert first; ties by id."""
    return sorted(prospects, key=lambda p: (-p.probability, p.id))


def allocate(prospects: list[Prospect], agents: list[Agent]) -> Plan:
    """The plan with the most expected conversions (see the module's docstring)."""
    for prospect in prospects:
        assert 0.0 <= prospect.probability <= 1.0 and math.isfinite(prospect.probability), prospect
    for agent in agents:
        assert agent.capacity_calls >= 0 and agent.skill >= 0.0, agent
    assert len({p.id for p in prospects}) == len(prospects), "prospect ids repeat"
    # One slot per call an agent can make; the best slots first. Among equal skills, round robin
    # (each agent's n-th call before anyone's n+1-th), so equal agents share a short list evenly.
    slots = sorted(
        ((agent.skill, agent.id, n) for agent in agents for n in range(agent.capacity_calls)),
        key=lambda slot: (-slot[0], slot[2], slot[1]),
    )
    ranked = rank(prospects)
    calls: dict[str, list[str]] = {agent.id: [] for agent in agents}
    expected = 0.0
    for (skill, agent_id, _), prospect in zip(slots, ranked, strict=False):
        calls[agent_id].append(prospect.id)
        expected += prospect.probability * skill
    filled = slots[: min(len(slots), len(ranked))]
    mean = sum(p.probability for p in prospects) / len(prospects) if prospects else 0.0
    random_expected = mean * sum(skill for skill, _, _ in filled)
    return Plan(calls, expected, random_expected)


def realised(plan: Plan, prospects: list[Prospect]) -> dict[str, float]:
    """Back-test on labelled prospects: conversions among those called, against random calling."""
    by_id = {p.id: p for p in prospects}
    called = [by_id[i] for ids in plan.calls.values() for i in ids]
    labelled = [p for p in prospects if p.converted is not None]
    assert labelled and all(p.converted is not None for p in called), "the back-test needs every label"
    base_rate = sum(1 for p in labelled if p.converted) / len(labelled)
    conversions = sum(1 for p in called if p.converted)
    random_conversions = base_rate * len(called)
    return {
        "called": len(called),
        "conversions": conversions,
        "random_expected_conversions": random_conversions,
        "lift": conversions / random_conversions if random_conversions else 0.0,
    }


def parse_agents(text: str) -> list[Agent]:
    """`a1:40,a2:30:1.2` -> agents (id:capacity[:skill]); ValueError naming the bad part."""
    agents = []
    for part in text.split(","):
        bits = part.split(":")
        if len(bits) not in (2, 3) or not bits[0]:
            raise ValueError(f"--agents: {part!r} is not id:capacity[:skill]")
        try:
            capacity = int(bits[1])
            skill = float(bits[2]) if len(bits) == 3 else 1.0
        except ValueError:
            raise ValueError(f"--agents: {part!r} has a capacity or skill that is not a number") from None
        if capacity < 0 or not (math.isfinite(skill) and skill >= 0):
            raise ValueError(f"--agents: {part!r} has a negative capacity or a bad skill")
        agents.append(Agent(bits[0], capacity, skill))
    if len(agents) > AGENTS_MAX or len({a.id for a in agents}) != len(agents):
        raise ValueError("--agents: too many, or an agent id repeats")
    return agents


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scoring", required=True, help="HOST:PORT of yunkai scoring serve")
    parser.add_argument("--prospects", type=Path, required=True, help="JSON lines: id, [converted], features")
    parser.add_argument("--agents", required=True, help="id:capacity[:skill],... (calls per day)")
    parser.add_argument("--model-version", type=int, help="marketing_response version (default: the newest)")
    serving.add_tls_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        agents = parse_agents(args.agents)
        ids, labels, rows = _read(args.prospects)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def score() -> list[float]:
        tls = serving.client_tls(args, "operator")
        async with ScoringClient(
            args.scoring, credentials=serving.client_credentials(tls), insecure=tls is None
        ) as client:
            return await client.score(MODEL, rows, args.model_version)

    try:
        probabilities = asyncio.run(score())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BadScoringReply as error:  # the allocation's asserts hold for what the client checked
        print(f"error: the scoring server at {args.scoring}: {error}", file=sys.stderr)
        return 1
    prospects = [Prospect(i, p, c) for i, p, c in zip(ids, probabilities, labels, strict=True)]
    plan = allocate(prospects, agents)
    report: dict[str, Any] = {
        "model": MODEL,
        "prospects": len(prospects),
        "calls": plan.calls,
        "expected_conversions": plan.expected_conversions,
        "random_expected_conversions": plan.random_expected_conversions,
        "lift": plan.lift,
    }
    if all(label is not None for label in labels) and prospects:
        report["realised"] = realised(plan, prospects)
    print(json.dumps(report, indent=2))
    return 0


def _read(path: Path) -> tuple[list[str], list[bool | None], list[dict[str, float]]]:
    ids: list[str] = []
    labels: list[bool | None] = []
    rows: list[dict[str, float]] = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            if len(ids) >= PROSPECTS_MAX:
                raise ValueError(f"{path}: more than {PROSPECTS_MAX} prospects")
            item = json.loads(line)
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ValueError(f"{path}:{number}: id: missing or not a string")
            ids.append(item.pop("id"))
            converted = item.pop("converted", None)
            labels.append(None if converted is None else bool(converted))
            for name, value in item.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{path}:{number}: {name}: {value!r} is not a number")
            rows.append({name: float(value) for name, value in item.items()})
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: a prospect id repeats")
    return ids, labels, rows
