"""Checks of the places a command will write, made before any work starts.

A bad --out (an existing file, a path under a file, a read-only folder) or an MLflow sqlite store
that cannot be written would otherwise end in a traceback after minutes of decoding or training (or,
for MLflow, after about two minutes of connection retries). Each check raises one DeferralError line.
Standard library only: `deferral generate` imports nothing heavy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deferral.errors import DeferralError


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists (a path under a regular file stops at the file)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_problem(folder: Path) -> str | None:
    """Why `folder` cannot be created or written, or None when it can."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only"
    return None


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """A folder the command creates or fills: not an existing file, and creatable/writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DeferralError(f"{flag} {path} is an existing file, not a folder: choose a folder path")
    problem = _writable_problem(path)
    if problem:
        raise DeferralError(f"{flag} {path} cannot be written ({problem}): choose a writable folder")


def check_output_file(path: str | Path, flag: str = "--out") -> None:
    """A file the command writes (replacing an old one): not a folder, and its folder creatable/writable."""
    path = Path(path)
    if path.is_dir():
        raise DeferralError(f"{flag} {path} is a folder, not a file: give a file path such as {path / 'out.md'}")
    problem = _writable_problem(path.parent)
    if problem is None and path.exists() and not os.access(path, os.W_OK):
        problem = f"{path} is read-only"
    if problem:
        raise DeferralError(f"{flag} {path} cannot be written ({problem}): choose a writable path")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///FILE` tracking URI (relative to the working directory), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    name = uri[len("sqlite:///"):].split("?", 1)[0]
    return None if name in ("", ":memory:") else Path(name)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # a file in the working directory (browse it with `mlflow ui`)
TRACKING_HELP = "MLflow tracking store; none: no tracking (the same in every command)"


def quiet_mlflow() -> None:
    """MLflow logs INFO lines (creating tables, creating an experiment) that the user asked for in
    effect: keep its warnings, drop the rest. Call before importing mlflow (it reads the variable
    then) and again after (its logger keeps the level)."""
    import logging

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def tracking_off(uri: str | None) -> bool:
    """`--tracking-uri none` (or an empty value) turns MLflow tracking off, in every command."""
    return uri is None or str(uri).strip().lower() in ("none", "")


def check_tracking_store(uri: str, flag: str = "--tracking-uri", disable: str | None = "--tracking-uri none") -> None:
    """An MLflow sqlite store must be writable, checked before MLflow opens (and retries) it."""
    if tracking_off(uri):
        return
    db = sqlite_path(str(uri))
    if db is None:
        return
    if db.is_dir():
        problem = f"{db} is a folder"
    elif db.exists() and not os.access(db, os.R_OK | os.W_OK):
        problem = f"{db} is read-only"
    else:  # sqlite also writes a journal next to the database file
        problem = _writable_problem(db.parent)
    if problem:
        raise DeferralError(
            f"MLflow store {uri} cannot be written ({problem}): pass {flag} sqlite:////WRITABLE/FOLDER/mlflow.db"
            + (f" or {disable}" if disable else "")
        )


def read_json_record(path: str | Path, fix: str) -> dict:
    """A JSON object a command keeps in its output folder (run.json): DeferralError when cut or foreign."""
    path = Path(path)
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else exc.reason
        raise DeferralError(f"{path} is corrupt (not valid JSON: {why}): {fix}") from None
    if not isinstance(record, dict):
        raise DeferralError(f"{path} is corrupt (a JSON {type(record).__name__}, not an object): {fix}")
    return record


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """The complete records of a JSON-lines file written by appending ([] when there is none). A line
    cut by an interruption, and whatever follows it, is left out; `repair` also cuts it from the file,
    so that the next append starts on a clean line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if repair and len(records) != len(lines):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records
