"""The `yunkai` front door imports a command's module only when that command runs (DESIGN
section 1): a ledger node loads no scoring, lending, risk or benchmark code, nor numpy,
matplotlib, PIL or zen-engine; `yunkai --help` lists every command without importing any."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cluster import cli
from cluster.local import NodeProcess

ROOT = Path(__file__).resolve().parent.parent
# What a ledger node must not load (top-level module names; zen-engine's module is `zen`).
NOT_IN_A_NODE = {"scoring", "lending", "risk", "loadtest", "numpy", "matplotlib", "PIL", "zen", "pandas", "catboost"}
OURS = {"proto", "serving", "node", "router", "scoring", "clients", "cluster", "loadtest", "lending", "risk"}


def imported(importtime_log: str) -> set[str]:
    """The modules `python -X importtime` reported importing. Each line reads
    `import time: <self us> | <cumulative us> | <indent><module>`; the first is a header.
    Only `import` statements are timed: the module a command's table entry names, which
    importlib.import_module loads, is not listed, but everything it imports is."""
    modules = set()
    for line in importtime_log.splitlines():
        if line.startswith("import time:") and not line.endswith("imported package"):
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


def run_yunkai(*words: str) -> subprocess.CompletedProcess[str]:
    """`yunkai WORDS` reporting its imports on stderr, its help unwrapped (wide COLUMNS)."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cluster.cli", *words],
        cwd=ROOT, env={**os.environ, "COLUMNS": "1000"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_ledger_node_imports_no_scoring_lending_risk_or_benchmark_code(tmp_path: Path) -> None:
    # `python -X importtime -m cluster.cli node --data-dir D --port 0`: `yunkai node` with the
    # interpreter reporting each import on stderr, which goes to D/node.log.
    node = NodeProcess(str(tmp_path))
    node.python_options = ["-X", "importtime"]
    node.start(timeout_s=60)
    assert node.stop() == 0, node.log_tail()
    modules = imported((tmp_path / "node.log").read_text())
    assert {"node.engine", "rocksdict"} <= modules, "the log was not parsed: the node's own modules are missing"
    loaded = sorted(m for m in modules if m.split(".")[0] in NOT_IN_A_NODE)
    assert loaded == [], f"a ledger node imported {loaded}"


def test_yunkai_help_lists_every_command_and_imports_none_of_them() -> None:
    done = run_yunkai("--help")
    assert done.returncode == 0, done.stderr
    for command in cli.COMMANDS:
        assert re.search(rf"^ +{re.escape(command.name)}\s+{re.escape(command.help)}$", done.stdout, re.M), command
    ours = sorted(m for m in imported(done.stderr) if m.split(".")[0] in OURS)
    assert ours == ["cluster"]  # and cluster/cli.py, run as __main__


def test_yunkai_node_help_shows_the_nodes_flags() -> None:
    done = run_yunkai("node", "--help")
    assert done.returncode == 0, done.stderr
    assert "--data-dir" in done.stdout and "--slots-total" in done.stdout
    assert not any(m.split(".")[0] in NOT_IN_A_NODE for m in imported(done.stderr))


def test_every_command_in_the_table_names_a_module_and_functions_that_exist() -> None:
    for command in cli.COMMANDS:
        if isinstance(command, cli.Group):
            chosen = [[command.name, m.name] for m in command.members if isinstance(m, cli.Command)]
        else:
            chosen = [[command.name]]
        for words in chosen:
            cli.build_parser(words)  # imports the module and looks its functions up: raises if one is missing
