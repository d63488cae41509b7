"""Imports point down, one way (DESIGN section 1): a layer never imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"proto", "node", "router", "scoring", "clients", "cluster", "loadtest", "lending", "risk"}
# What each package may import among ours. cluster/ and loadtest/ sit on top together:
# the `yunkai` command (cluster/cli.py) fronts the benchmarks, which start local clusters.
ALLOWED = {
    "proto": {"proto"},
    "router": {"proto", "router"},
    "node": {"proto", "node", "router"},
    "clients": {"proto", "router", "clients"},
    "scoring": {"proto", "scoring"},
    # Lending is the bank's business on top of the ledger: it calls the ledger through the SDK.
    "lending": {"proto", "clients", "lending"},
    # Risk decides on top of lending: it scores through clients/, and opens credit lines with lending/limits.py.
    "risk": {"proto", "clients", "lending", "risk"},
    "cluster": PACKAGES,
    "loadtest": PACKAGES,
}
# Within router/, the server and controller are not the routing core: nothing below them
# (node/, clients/) may use them.
ROUTER_SERVER_SIDE = {"router.server", "router.controller", "router.metastore"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).glob("*.py")):
            for name in imports_of(path):
                top = name.split(".")[0]
                if top in PACKAGES and top not in allowed:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
                if package in ("node", "clients") and any(name.startswith(m) for m in ROUTER_SERVER_SIDE):
                    wrong.append(f"{path.relative_to(ROOT)} imports the router's server side: {name}")
    assert not wrong, "\n".join(wrong)
