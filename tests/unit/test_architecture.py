"""The layers, read from the code: the core imports no adapter, nothing imports the entry point, no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("rakuten_mm", "rakuten_cli", "pipelines", "components", "serving", "rollout", "devtools", "tools")
# package → the project packages it may import (third-party imports are checked separately below).
ALLOWED = {
    "rakuten_mm": set(),
    "components": {"rakuten_mm", "rollout"},
    "pipelines": {"rakuten_mm", "components"},
    "serving": {"rakuten_mm"},
    "rollout": {"rakuten_mm"},
    "devtools": {"rakuten_mm", "serving"},
    "tools": {"rakuten_mm"},
    "rakuten_cli": {"rakuten_mm", "pipelines", "serving", "rollout"},
}
CORE_FORBIDDEN = {"kfp", "kserve", "kubernetes", "tritonclient"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = _modules()


def test_each_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, path in MODULES.items():
        package = module.split(".")[0]
        for name in _imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{module} imports {name}")
            if package == "rakuten_mm" and top in CORE_FORBIDDEN:
                wrong.append(f"{module} imports {name} (the core stays free of the adapters' libraries)")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_between_project_modules() -> None:
    graph = {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is not a circle worth reporting.
    for module in graph:
        graph[module] = {n for n in graph[module] if not module.startswith(n + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from pipelines.local_runner import run_local\nimport kfp\n")
    assert {"pipelines.local_runner", "pipelines.local_runner.run_local", "kfp"} <= _imports(bad)
