"""The shape of the code: imports inside ``shared/`` flow one way (no cycle), and no module grows past 400 lines.

Imports are read from the source (every ``import`` statement, at module level, under ``TYPE_CHECKING`` or inside a
function), so a cycle hidden in a function-level import is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "shared"
MAX_LINES = 400
# Every Python module of the repository: the app, its tooling and its tests.
MODULES = [
    ROOT / "function_app.py",
    *sorted(
        p
        for folder in ("shared", "localdev", "bench", "tests", "scripts")
        for p in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in p.parts
    ),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``tree`` imports (``from a import b`` is ``a.b`` when that is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.add(target if target in known else node.module)
    return found & known


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts}
    known = set(paths)
    return {name: imported(ast.parse(path.read_text()), known) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None`` (depth-first search, in name order)."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        visiting.append(name)
        for target in sorted(graph[name]):
            if target in visiting:
                return [*visiting[visiting.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        if name not in done and (cycle := visit(name)):
            return cycle
    return None


def test_imports_inside_shared_should_form_no_cycle():
    graph = import_graph()
    assert len(graph) > 30  # the package was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_should_find_a_cycle_through_a_function_level_import():
    tree = ast.parse("from shared.b import x\ndef f():\n    from shared.a import y\n")
    known = {"shared.a", "shared.b"}
    graph = {"shared.a": imported(tree, known) - {"shared.a"}, "shared.b": {"shared.a"}}
    assert find_cycle(graph) == ["shared.a", "shared.b", "shared.a"]


def test_only_the_orchestration_should_join_the_reader_the_writers_and_the_store():
    layers = {"shared.streams", "shared.estuary", "shared.snapshot", "shared.position"}
    joiners = {name for name, targets in import_graph().items() if len(targets & layers) >= 2}
    assert joiners, "no module joins them: the layer names are out of date"
    assert all(name.startswith("shared.replicate.") for name in joiners), sorted(joiners)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_should_stay_within_400_lines(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it along a seam"
