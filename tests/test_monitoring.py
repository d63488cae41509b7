"""Alerts and the dashboard (cluster/monitoring/): the rules pass promtool's check and their unit
tests, every dashboard query is valid PromQL, and every metric either names is exported by the
real processes (a replicated cluster, a router and a lending server scraped over HTTP; the
scoring and risk servers' metrics as their modules register them).

promtool comes from Debian's prometheus package: cluster/install-prometheus.sh (`make test`
runs it)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client import REGISTRY

from clients.ledger import Account, SyncLedgerClient, Transfer
from cluster.commands import LocalCluster
from cluster.local import LendingProcess

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "cluster" / "monitoring"
CNY = 156
METRIC = re.compile(r"\byunkai_[a-z_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: run cluster/install-prometheus.sh (make test does)"
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_alert_rules_pass_promtools_check_and_their_unit_tests() -> None:
    checked = subprocess.run(
        [promtool(), "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 13 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yml"], cwd=MONITORING, capture_output=True, text=True
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 18
    # promtool parses PromQL in rule files: each query as a recording rule.
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # A broken query is caught the same way (the check is not vacuous).
    path.write_text(json.dumps({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "sum(rate(x[5m])"}]}]}))
    assert subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True).returncode != 0


def free_port_block(size: int) -> int:
    """A base port with `size` ports and the metrics ports above it (+100) free on loopback."""
    for base in range(41000, 60000, 211):
        taken = False
        for port in [*range(base, base + size), *range(base + 100 - size, base + 100 + size + 1)]:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    taken = True
                    break
        if not taken:
            return base
    raise AssertionError("no free port block")


SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


def scrape(port: int) -> set[str]:
    """The names a process exports on its metrics port: its samples, and the families it declares
    (`# TYPE`) with every sample name they can have (a labelled metric has no sample until its
    first observation, a book gauge none until there is a loan)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names |= {family + suffix for suffix in SUFFIXES}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def registered(*modules: str) -> set[str]:
    """The sample names the modules' metrics can export (every suffix of each family)."""
    for module in modules:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in SUFFIXES}
    return names


def test_every_metric_the_alerts_and_the_dashboard_name_is_exported(tmp_path: Path) -> None:
    base = free_port_block(4)
    cluster = LocalCluster(str(tmp_path / "cluster"), nodes=2, port=base, replicas=2, metrics=True).start()
    lending = None
    try:
        with SyncLedgerClient(cluster.address, timeout_s=10) as sdk:
            assert all(r.ok for r in sdk.create_accounts([Account("{m1}:a", CNY, 1), Account("{m2}:b", CNY, 1)]))
            assert sdk.create_transfers([Transfer("t1", "{m1}:a", "{m2}:b", 5, CNY, 1)])[0].ok
        with SyncLedgerClient(cluster.address, timeout_s=10, via_router=True) as through_router:
            assert through_router.create_transfers([Transfer("t2", "{m1}:a", "{m2}:b", 5, CNY, 1)])[0].ok
        lending_metrics = base + 150
        lending = LendingProcess(
            str(tmp_path / "lending"), ["--router", cluster.address, "--metrics-port", str(lending_metrics)]
        ).start()
        exported = scrape(base + 100 - 0) | scrape(base + 101) | scrape(base + 102) | scrape(lending_metrics)
    finally:
        if lending is not None:
            lending.stop()
        cluster.stop()
    exported |= registered("scoring.server", "risk.server")
    named = set(METRIC.findall((MONITORING / "alerts.yml").read_text()))
    named |= {name for query in dashboard_queries() for name in METRIC.findall(query)}
    # The error-rate queries name their metrics by a regular expression: each of those too.
    named |= {f"yunkai_{kind}_requests_total" for kind in ("node", "router", "scoring", "lending", "risk")}
    named.discard("yunkai_")
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"named by alerts or the dashboard but exported by no process: {missing}"
    assert {"yunkai_router_nodes", "yunkai_tls_certificate_expiry_timestamp_seconds"} <= exported
