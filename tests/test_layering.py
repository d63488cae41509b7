"""Imports point down, one way (DESIGN section 1): a layer never imports one above it, and no
package or module imports one that imports it back.

The import graph is static: every `import` and `from ... import` anywhere in a module, those
inside functions included, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "proto", "serving", "node", "router", "scoring", "clients", "cluster", "loadtest", "lending", "risk", "gateway",
}  # fmt: skip
# What each package may import among ours.
ALLOWED = {
    "proto": {"proto"},
    # Server plumbing every server shares (handler wrapper, bootstrap, channels, interceptors).
    "serving": {"proto", "serving"},
    "router": {"proto", "serving", "router"},
    "node": {"proto", "serving", "node", "router"},
    "clients": {"proto", "serving", "router", "clients"},
    "scoring": {"proto", "serving", "scoring"},
    # Lending is the bank's business on top of the ledger: it calls the ledger through the SDK.
    "lending": {"proto", "serving", "clients", "lending"},
    # Risk decides on top of lending: it scores through clients/, opens credit lines in the lending service,
    # and moves behavioural limits with lending/limits.py.
    "risk": {"proto", "serving", "clients", "lending", "risk"},
    # The partner gateway calls every service for partners: through clients/ (the ledger, its
    # records) and gRPC stubs; it uses lending's account names and rules, never its server.
    "gateway": {"proto", "serving", "clients", "lending", "gateway"},
    # The front door and operator commands sit on top of every process. The benchmarks sit on
    # cluster/ (they start local clusters), so the `yunkai` command table names their modules
    # as strings, imported only when one runs.
    "cluster": PACKAGES - {"loadtest"},
    "loadtest": PACKAGES,
}
# Within router/, the server and controller are not the routing core: nothing below them
# (node/, clients/) may use them.
ROUTER_SERVER_SIDE = {
    "router.server",
    "router.controller",
    "router.metastore",
    "router.control",
    "router.leadership",
    "router.etcd",
    "router.mapview",
    "router.migration",
    "router.workers",
    "router.console",
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def our_modules() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package's __init__ by the package's name)."""
    modules: dict[str, Path] = {}
    for package in sorted(PACKAGES):
        if (ROOT / package).is_dir():
            for path in sorted((ROOT / package).glob("*.py")):
                modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def module_graph() -> dict[str, set[str]]:
    """Each of our modules and the modules of ours it imports (the longest dotted prefix of each
    imported name that is one of our modules: `from proto import ledger_pb2` reaches `proto`
    and `proto.ledger_pb2`; `from clients.ledger import Account` reaches `clients.ledger`)."""
    modules = our_modules()

    def module_of(name: str) -> str | None:
        words = name.split(".")
        return next((m for m in (".".join(words[:n]) for n in range(len(words), 0, -1)) if m in modules), None)

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for imported in imports_of(path) if (m := module_of(imported)) not in (None, name)}
    return graph


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        package = module.split(".")[0]
        graph.setdefault(package, set()).update(t.split(".")[0] for t in targets)
        graph[package].discard(package)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of nodes that reach each other (a strongly connected component of
    more than one node), as a path from its smallest node back to it: [a, b, a]."""
    found = []
    for component in _components(graph):
        if len(component) > 1:
            start = min(component)
            found.append(_path_back(graph, start, component))
    return sorted(found)


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _path_back(graph: dict[str, set[str]], start: str, component: set[str]) -> list[str]:
    """The shortest path from `start` back to itself within `component` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in a component it cannot get back to: {sorted(component)}")


def test_every_package_is_layered_here_and_installed_with_yunkai() -> None:
    """A package missing from pyproject.toml's list is missing from an installed yunkai (its
    console script then cannot import it, though tests run from the tree do)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    assert found == PACKAGES, found ^ PACKAGES
    assert found <= listed, found - listed


def test_every_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, path in our_modules().items():
        package = module.split(".")[0]
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            if package in ("node", "clients") and any(name.startswith(m) for m in ROUTER_SERVER_SIDE):
                wrong.append(f"{path.relative_to(ROOT)} imports the router's server side: {name}")
    assert not wrong, "\n".join(wrong)


def test_no_package_imports_a_package_that_imports_it_back() -> None:
    found = cycles(package_graph())
    assert not found, "\n".join(" -> ".join(cycle) for cycle in found)


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    found = cycles(module_graph())
    assert not found, "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_cycle_finder_finds_a_cycle_and_nothing_in_a_chain() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
