"""The layers import downward only: deferral/ <- inference/ <- training/.

A router exported once runs with deferral/ + inference/ alone, so neither may import training/ or
lightning, and deferral/ may not import inference/. mlflow and datasets may be imported inside a
function at inference's edges (the evaluate command's tracking, the `hf:` task), never at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "deferral": {"inference", "training", "benchmarks", "lightning", "mlflow", "datasets"},
    "inference": {"training", "benchmarks", "lightning"},
    "training": {"benchmarks"},
}
# The one downward-pointing exception: deferral/cli.py, the entry point, imports each command's module
# by its name (a string in SUBCOMMANDS), lazily, when that command runs.
FORBIDDEN_AT_MODULE_LEVEL = {"mlflow", "datasets"}


def imported_roots(path: Path, module_level_only: bool = False) -> set[str]:
    """Top-level package names a module imports (anywhere, or in its top-level statements only)."""
    roots = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_upward_imports(layer):
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            (imported_roots(path) & FORBIDDEN[layer])
            | (imported_roots(path, module_level_only=True) & FORBIDDEN_AT_MODULE_LEVEL)
        )
        for path in sorted((ROOT / layer).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_imports_are_absolute():
    """Relative imports would slip past the checks above (they read absolute module names)."""
    relative = sorted(
        str(path.relative_to(ROOT))
        for layer in ("deferral", "inference", "training")
        for path in (ROOT / layer).rglob("*.py")
        if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(path.read_text())))
    )
    assert relative == []


def project_imports(path: Path) -> set[str]:
    """Project modules (deferral., inference., training.) a module imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n.split(".")[0] in ("deferral", "inference", "training")}


def test_no_import_cycles():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for layer in ("deferral", "inference", "training") for p in (ROOT / layer).rglob("*.py")}
    modules = {name.removesuffix(".__init__"): path for name, path in modules.items()}
    graph = {name: {m for m in project_imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ importing nothing is a node like any other; find any cycle by depth-first search
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
