"""Where the shipped assets live: the default drafter and router (`models/`) and the example configs
(`configs/`). In a source checkout they are read in place; `pip install .` copies them to
`<prefix>/share/deferral/` (see `[tool.setuptools.data-files]` in pyproject.toml)."""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def asset_roots() -> list[Path]:
    """Folders searched in order: the checkout, then the install prefixes (venv, system, user)."""
    prefixes = [sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None) or ""]
    return [REPO_ROOT] + [Path(p) / "share" / "deferral" for p in dict.fromkeys(prefixes) if p]


def asset_path(*parts: str) -> Path:
    """The first existing `root/parts...`; the first root's path when none exists (for error messages)."""
    roots = asset_roots()
    for root in roots:
        path = root.joinpath(*parts)
        if path.exists():
            return path
    return roots[0].joinpath(*parts)
