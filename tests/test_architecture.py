"""The shape of the house, checked: the import graph of core/, app/ and pages/ has no cycle and no arrow
back up, core never names the layers above it, no module outgrows ~400 lines, and no module name is
used twice across the layers.

The graph includes imports inside functions: an import moved into a function to dodge a cycle is
still a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"core": 0, "app": 1, "pages": 2}  # an import may point to the same or a lower layer
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """marginlens.* module name -> file, for every .py file of the three layers."""
    found = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(("marginlens", *parts))] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The marginlens modules `module` imports, anywhere in its file, resolved to module names."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        targets.update(n for n in names if n in MODULES)
    targets.discard(module)
    return targets


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_the_graph_is_read():
    # guards the checks below against an empty or mis-parsed graph passing vacuously
    assert len(MODULES) > 40
    assert "marginlens.core.jobs" in GRAPH["marginlens.core.scoring.score_job"]
    assert any(m.startswith("marginlens.app.") for m in GRAPH["marginlens.pages.explore_page"])


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for target in sorted(graph.get(node, ())):
            if seen.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in seen:
                visit(target, [*path, target])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    return cycles


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "\n".join(cycles)


def test_core_subpackages_form_no_cycle():
    """Capabilities stack: data at the bottom, then scoring, selection, audit and training, the CLI on top.
    A module-level graph can be acyclic while two subpackages import each other; this catches that."""
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if module.startswith("marginlens.core.") and module.count(".") >= 3:
            own = module.split(".")[2]
            packages.setdefault(own, set()).update(
                t.split(".")[2] for t in targets
                if t.startswith("marginlens.core.") and t.count(".") >= 3 and t.split(".")[2] != own)
    assert packages["selection"] >= {"data"} and "cli" not in set().union(*packages.values())
    cycles = _cycles(packages)
    assert not cycles, "\n".join(cycles)


def test_no_arrow_back_up():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == 0))
def test_core_never_names_the_layers_above(module):
    path = MODULES[module]
    source = path.read_text()
    assert not re.search(r"^\s*(import|from)\s+streamlit", source, re.M), f"{path} imports streamlit"
    named = [s for s in _string_constants(path)
             if re.search(r"marginlens\.(app|pages)\b|(^|/)(app|pages)/|\bmain\.py\b", s)]
    assert not named, f"{path} refers to the dashboard by name or path: {named}"


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_module_name_used_twice():
    names: dict[str, list[str]] = {}
    for module in MODULES:
        names.setdefault(module.rpartition(".")[2], []).append(module)
    twice = {name: where for name, where in names.items() if len(where) > 1}
    assert not twice, twice
