"""`yunkai scoring report|outcome`: read a running scoring server's monitoring, and feed it outcomes.

    yunkai scoring report --scoring HOST:PORT [--model M] [--json]
    yunkai scoring outcome --scoring HOST:PORT MODEL ID LABEL [--row R]
    yunkai scoring outcome --scoring HOST:PORT MODEL --file OUTCOMES.jsonl

`report` prints, per loaded model version (champion first): its drift window, the PSI of its
score and of each feature (worst first, flagged at the thresholds of scoring/monitor.py), and its
AUC on reported outcomes, or "not enough data" and how far it is from the minimum sample.
`outcome` reports the label (1: the event the model predicts, 0: not) of rows scored by calls
that carried an id; a file holds one JSON object a line, {"id": ..., "row": 0, "label": 1}. It
prints the count of each result as JSON and exits 1 if any outcome found no kept score or
contradicts one recorded before (each named on stderr).

Each is gRPC to the server as the operator, with scoring/lifecycle.py's plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from proto import inference_pb2 as pb
from scoring import lifecycle, monitor

NAMES_SHOWN_MAX = 20  # unknown or conflicting outcomes named on stderr; the rest are counted


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    lifecycle.add_scoring_arguments(parser)
    parser.add_argument("--model", default="", help="one model (default: every loaded model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def add_outcome_arguments(parser: argparse.ArgumentParser) -> None:
    lifecycle.add_scoring_arguments(parser)
    parser.add_argument("model", help="model name, e.g. credit_risk")
    parser.add_argument("id", nargs="?", help="the id of the ModelInfer call that scored the row")
    parser.add_argument("label", nargs="?", type=int, help="1: the event the model predicts happened; 0: it did not")
    parser.add_argument("--row", type=int, default=0, help="the row's index in that call (default 0)")
    parser.add_argument(
        "--file", type=Path, help='outcomes, one JSON object a line: {"id": "...", "row": 0, "label": 1}'
    )


def report_main(args: argparse.Namespace) -> int:
    try:
        reply: pb.ModelMonitorResponse = lifecycle.call(
            args, "ModelMonitor", pb.ModelMonitorRequest(model_name=args.model)
        )
    except grpc.aio.AioRpcError as error:
        return lifecycle.refused(error)
    versions = [version_json(v) for v in reply.versions]
    if args.json:
        print(json.dumps({"versions": versions}, indent=2))
    else:
        print("\n".join(table(versions)))
    return 0


def version_json(reply: pb.VersionMonitor) -> dict[str, Any]:
    def psi(value: float) -> dict[str, Any]:
        return {"psi": round(value, 6), "flag": monitor.flag(value)}

    return {
        "model": reply.model_name,
        "version": reply.version,
        "role": reply.role,
        "window": {
            "rows": reply.window_rows,
            "rows_max": reply.window_rows_max,
            "rows_min": reply.window_rows_min,
            "age_s": reply.window_age_s if reply.HasField("window_age_s") else None,
        },
        "features_binned": reply.features_binned,
        "score": psi(reply.score_psi) if reply.HasField("score_psi") else None,
        "features": [{"name": f.name} | psi(f.psi) for f in reply.features],
        "outcomes": {
            "positives": reply.outcome_positives,
            "negatives": reply.outcome_negatives,
            "class_min": reply.outcome_class_min,
            "max": reply.outcomes_max,
            "auc": round(reply.outcome_auc, 6) if reply.HasField("outcome_auc") else None,
        },
    }


def table(versions: list[dict[str, Any]]) -> Iterator[str]:
    """The report as a person reads it: a block per version."""
    if not versions:
        yield "no models loaded"
    for v in versions:
        window, outcomes = v["window"], v["outcomes"]
        yield f"{v['model']} v{v['version']}" + (f" ({v['role']})" if v["role"] else "")
        age = "" if window["age_s"] is None else f"; oldest row scored {duration(window['age_s'])} ago"
        yield f"  drift window  {window['rows']} rows (the newest, up to {window['rows_max']}){age}"
        if v["score"] is None:
            yield f"  drift         not enough data: {window['rows']} of {window['rows_min']} rows"
        else:
            width = max([len("score"), *(len(f["name"]) for f in v["features"])])
            yield "  drift         PSI against the training reference, the score then each feature, worst first"
            for name, psi in [("score", v["score"]), *((f["name"], f) for f in v["features"])]:
                yield f"    {name:<{width}}  {psi['psi']:7.4f}  {psi['flag']}".rstrip()
            if not v["features_binned"]:
                yield "  (no feature bins: this version was trained before they were stored; retrain to see them)"
        counts = f"{outcomes['positives']} of label 1, {outcomes['negatives']} of label 0"
        if outcomes["auc"] is None:
            yield f"  outcomes      not enough data: {counts}; {outcomes['class_min']} of each needed"
        else:
            total = outcomes["positives"] + outcomes["negatives"]
            yield f"  outcomes      AUC {outcomes['auc']:.4f} on {total} ({counts}; the newest up to {outcomes['max']})"
        yield ""
    yield f"PSI: minor >= {monitor.PSI_MINOR}, MAJOR >= {monitor.PSI_MAJOR} (rule of thumb; docs/models.md, Monitoring)"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def outcome_main(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.id is None or args.label is None):
        print("error: give ID and LABEL, or --file", file=sys.stderr)
        return lifecycle.EXIT_REFUSED
    try:
        outcomes = read_outcomes(args.file) if args.file else [(args.id, args.row, args.label)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"error: {args.file}: {error}", file=sys.stderr)
        return lifecycle.EXIT_REFUSED
    try:
        results = asyncio.run(send(args, outcomes))
    except grpc.aio.AioRpcError as error:
        return lifecycle.refused(error)
    counts = {"recorded": 0, "exists": 0, "unknown_score": 0, "conflicts": 0}
    problems = []
    for (call_id, row, label), result in zip(outcomes, results, strict=True):
        name = pb.OutcomeResult.Name(result).lower().removeprefix("outcome_")
        counts[name] += 1
        if name == "unknown_score":
            problems.append(
                f"no kept score for id {call_id!r} row {row} of model {args.model!r}: never scored with that id, "
                f"or forgotten (each version keeps its newest {monitor.SCORES_KEPT_MAX})"
            )
        elif name == "conflicts":
            problems.append(f"id {call_id!r} row {row}: another label than {label} was recorded before; kept")
    for line in problems[:NAMES_SHOWN_MAX]:
        print(line, file=sys.stderr)
    if len(problems) > NAMES_SHOWN_MAX:
        print(f"... and {len(problems) - NAMES_SHOWN_MAX} more", file=sys.stderr)
    print(json.dumps(counts))
    return lifecycle.EXIT_REFUSED if problems else 0


def read_outcomes(path: Path) -> list[tuple[str, int, int]]:
    outcomes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"line {number} is not a JSON object")
        outcomes.append((str(record["id"]), int(record.get("row", 0)), int(record["label"])))
    return outcomes


async def send(args: argparse.Namespace, outcomes: list[tuple[str, int, int]]) -> list[int]:
    """The outcomes, in calls of at most OUTCOMES_PER_CALL_MAX; the results in order."""
    results: list[int] = []
    async with lifecycle.operator_stub(args) as stub:
        for first in range(0, len(outcomes), monitor.OUTCOMES_PER_CALL_MAX):
            chunk = outcomes[first : first + monitor.OUTCOMES_PER_CALL_MAX]
            request = pb.ModelOutcomeRequest(
                model_name=args.model,
                outcomes=[pb.ModelOutcomeRequest.Outcome(id=i, row=r, label=label) for i, r, label in chunk],
            )
            reply = await stub.ModelOutcome(request, timeout=lifecycle.TIMEOUT_S)
            results.extend(reply.results)
    return results
