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
    "deferral": {"inference", "training", "lightning", "mlflow", "datasets"},
    "inference": {"training", "lightning"},
}
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
