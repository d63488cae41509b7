"""The PNG of a `yunkai bench` result: what happened second by second, or what a sweep found.

A run: throughput (offered and achieved per second) above, p50 and p99 per second below (log
scale), a dashed vertical line at each marked event (a node added), and the PostgreSQL
peer's lines beside yunkai's when it ran. A sweep: achieved rate and p99 against the offered
rate of each probe, with the p99 target. matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): the backend is chosen first

DPI = 72
COLOURS = {"yunkai": "tab:blue", "postgres": "tab:orange"}


def draw(path: str, result: dict[str, Any]) -> None:
    """Write the run's (or the sweep's) plot to `path`."""
    runs = [("yunkai", result)]
    peer = result.get("peer")
    if peer is not None and "per_second" in peer:
        runs.append(("postgres", peer))
    if "sweep" in result:
        _sweep(path, result, runs)
    else:
        _series(path, result, runs)


def _title(result: dict[str, Any]) -> str:
    scenario = result.get("scenario", "")
    return f"yunkai bench --scenario {scenario}: {result.get('target', '')}"


def _series(path: str, result: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> None:
    figure, (rate_axes, latency_axes) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for label, figures in runs:
        seconds = [p["t_s"] for p in figures["per_second"]]
        colour = COLOURS[label]
        rate_axes.plot(seconds, [p["offered_per_s"] for p in figures["per_second"]], "--", color=colour, alpha=0.5)
        rate_axes.plot(
            seconds, [p["achieved_per_s"] for p in figures["per_second"]], color=colour, label=f"{label} achieved"
        )
        for key, style in (("p50_ms", ":"), ("p99_ms", "-")):
            points = [(p["t_s"], p[key]) for p in figures["per_second"] if p[key] is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                latency_axes.plot(xs, ys, style, color=colour, label=f"{label} {key.removesuffix('_ms')}")
    for number, event in enumerate(result.get("events", [])):
        for axes in (rate_axes, latency_axes):
            axes.axvline(event["t_s"], color="tab:red", linestyle="--", linewidth=1)
        height = 0.04 + 0.1 * number  # one line of text per event, so that close events stay legible
        rate_axes.annotate(
            f" {event['what']}", (event["t_s"], height), xycoords=("data", "axes fraction"), fontsize=7, color="tab:red"
        )
    rate_axes.set_ylabel("operations/s (dashed: offered)")
    rate_axes.set_ylim(bottom=0)
    rate_axes.legend(fontsize=8, loc="upper right")
    rate_axes.set_title(_title(result), fontsize=9)
    latency_axes.set_yscale("log")
    latency_axes.set_ylabel("latency from due time, ms")
    latency_axes.set_xlabel("second of the run")
    latency_axes.legend(fontsize=8, loc="upper right")
    for axes in (rate_axes, latency_axes):
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _sweep(path: str, result: dict[str, Any], runs: list[tuple[str, dict[str, Any]]]) -> None:
    figure, (rate_axes, latency_axes) = plt.subplots(1, 2, figsize=(10, 4))
    target = result["sweep"]["p99_target_ms"]
    for label, figures in runs:
        if "sweep" not in figures:
            continue
        probes = sorted(figures["sweep"]["probes"], key=lambda p: p["offered_per_s"])
        offered = [p["offered_per_s"] for p in probes]
        colour = COLOURS[label]
        rate_axes.plot(offered, [p["achieved_per_s"] for p in probes], "o-", color=colour, label=label)
        latency_axes.plot(offered, [p["p99_ms"] for p in probes], "o-", color=colour, label=f"{label} p99")
        best = figures["sweep"]["best_rate_per_s"]
        if best:
            rate_axes.axvline(best, color=colour, linestyle=":", linewidth=1)
    top = max(p["offered_per_s"] for _, f in runs if "sweep" in f for p in f["sweep"]["probes"])
    rate_axes.plot([0, top], [0, top], color="grey", linewidth=0.8, label="achieved = offered")
    rate_axes.set_xlabel("offered operations/s")
    rate_axes.set_ylabel("achieved operations/s")
    rate_axes.legend(fontsize=8)
    latency_axes.axhline(target, color="tab:red", linestyle="--", linewidth=1, label=f"target {target:g} ms")
    latency_axes.set_yscale("log")
    latency_axes.set_xlabel("offered operations/s")
    latency_axes.set_ylabel("p99 from due time, ms")
    latency_axes.legend(fontsize=8)
    for axes in (rate_axes, latency_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(_title(result) + f" — sweep, p99 target {target:g} ms", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
