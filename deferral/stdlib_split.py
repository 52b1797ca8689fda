"""The Python standard library split into a training and a held-out part, by file path.

Logging (training/logs/corpora.py: the `stdlib`, `stdlib-docs`, `instructions` and `mixed` corpora) and
evaluation (inference/tasks/stdlib_continuation.py) both read it, so a held-out file is held out
everywhere, on every Python version (the split hashes paths relative to the standard library root).
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from deferral.errors import DeferralError

STDLIB_PARTS = ("train", "heldout", "all")
STDLIB_HELDOUT_PERCENT = 10  # files whose path hash falls in this percentile band are held out
_STDLIB_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relative_path: str) -> bool:
    """Deterministic held-out membership of a stdlib file, by a hash of its path relative to the stdlib root."""
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < STDLIB_HELDOUT_PERCENT


def stdlib_files(part: str = "train") -> list[Path]:
    """The standard-library .py files of one part ('train', 'heldout' or 'all'), sorted by relative path.

    Test suites and installed packages are excluded. The train and held-out parts are disjoint and
    depend only on file paths, so every command (logging, evaluation) sees the same split.
    """
    if part not in STDLIB_PARTS:
        raise DeferralError(f"unknown stdlib part '{part}': use stdlib:train, stdlib:heldout or stdlib:all")
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _STDLIB_EXCLUDED_DIRS & set(rel.parts[:-1]):
            continue
        if part == "all" or (part == "heldout") == is_heldout(rel.as_posix()):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())
