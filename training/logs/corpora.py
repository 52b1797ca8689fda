"""Corpus readers: turn a `--data` spec into an ordered, repeatable stream of text documents.

Specs (see docs/logging.md):
    stdlib[:train|heldout|all]    the running Python's standard-library .py files, split by file
    stdlib-docs[:PART]            English prose of that part: long docstrings, plus the language-reference
                                  topics of pydoc_data (train part); see training/logs/prose_corpora.py
    instructions[:PART]           short chat instructions built from that part (training/logs/prose_corpora.py)
    PATH.txt                      documents separated by blank lines (--txt-docs paragraph|line|file)
    PATH.jsonl                    one JSON object per line, text in --text-column
    PATH.parquet                  text in --text-column
    'GLOB*' or a list a,b         several such files, in sorted order
    DIR                           every text/source file below DIR, one document per file
    NAME[/CONFIG][:SPLIT]         a Hugging Face dataset (a folder written by save_to_disk works too)

A document's index in the stream is its `doc_id`; the same spec always yields the same documents in
the same order, which is what makes resumed runs and per-document splits reproducible.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator

from deferral.errors import DeferralError
from training.logs.corpus import Corpus  # noqa: F401  (re-exported: the type every source returns)
from deferral.stdlib_split import (  # noqa: F401  (re-exported: corpus specs and their users)
    STDLIB_HELDOUT_PERCENT,
    STDLIB_PARTS,
    is_heldout,
    stdlib_files,
    stdlib_root,
)

TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".js", ".ts", ".java", ".go",
    ".rs", ".rb", ".sh", ".toml", ".yaml", ".yml", ".json", ".html", ".css", ".tex", ".sql", ".lua", ".kt",
}
_HASH_LIMIT = 256 << 20  # local corpora below this size are content-hashed for the resume check


# ---------------------------------------------------------------- stdlib
# The split itself lives in deferral/stdlib_split.py: evaluation tasks read it without training code.


# ---------------------------------------------------------------- local files


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeferralError(
            f"{path} is not UTF-8 text (byte {exc.start}): convert or remove the file, or narrow --data"
        ) from None
    except OSError as exc:
        raise DeferralError(f"could not read {path}: {exc.strerror}: check the file") from None


def _txt_documents(path: Path, txt_docs: str) -> Iterator[str]:
    text = _read_text(path)
    if txt_docs == "file":
        yield text
    elif txt_docs == "line":
        yield from (line for line in text.splitlines() if line.strip())
    else:  # paragraphs: blocks separated by one or more blank lines
        block: list[str] = []
        for line in text.splitlines(keepends=True):
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block)
                block = []
        if block:
            yield "".join(block)


def _column_error(path, column: str, available) -> DeferralError:
    return DeferralError(
        f"{path} has no text column '{column}' (columns: {', '.join(map(str, available))}): pass --text-column NAME"
    )


def _jsonl_documents(path: Path, column: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DeferralError(f"{path}:{n} is not a valid UTF-8 JSON line: fix or remove that line") from None
            if not isinstance(row, dict) or column not in row:
                keys = list(row) if isinstance(row, dict) else [type(row).__name__]
                raise _column_error(f"{path}:{n}", column, keys)
            if not isinstance(row[column], str):
                raise DeferralError(f"{path}:{n} field '{column}' is not a string: fix that line or pass --text-column")
            yield row[column]


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        raise DeferralError(f"{path} is not a readable Parquet file ({exc}): check the file") from None
    if column not in pf.schema_arrow.names:
        raise _column_error(path, column, pf.schema_arrow.names)
    kind = pf.schema_arrow.field(column).type
    value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
    if not any(test(value_kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)):
        raise DeferralError(f"{path} column '{column}' holds {kind}, not text: pass --text-column NAME of a text column")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield value or ""


def _file_documents(path: Path, column: str, txt_docs: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_documents(path, column)
    if suffix == ".parquet":
        return _parquet_documents(path, column)
    return _txt_documents(path, txt_docs)


def _fingerprint(files: list[Path], root: Path | None) -> dict:
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    for p in files:
        name = p.relative_to(root).as_posix() if root else str(p)
        digest.update(f"{name}\0{p.stat().st_size}\0".encode())
        if total <= _HASH_LIMIT:
            digest.update(hashlib.sha256(p.read_bytes()).digest())
    return {"files": len(files), "bytes": total, "sha256": digest.hexdigest(), "content_hashed": total <= _HASH_LIMIT}


def _many_files_corpus(kind: str, spec: str, files: list[Path], root: Path | None, reader, extra: dict) -> Corpus:
    if not files:
        raise DeferralError(f"--data {spec} matches no files: check the path or pattern")

    def documents():
        for path in files:
            yield from reader(path)

    return Corpus({"kind": kind, "spec": spec, **extra, **_fingerprint(files, root)}, documents)


def _local_files(spec: str) -> list[Path] | None:
    """The files a local spec names (glob, comma list or one file), or None when it is not local."""
    if any(ch in spec for ch in "*?["):
        return [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file()]
    parts = [Path(p) for p in spec.split(",")] if "," in spec else [Path(spec)]
    if all(p.is_file() for p in parts):
        return parts
    return None


# ---------------------------------------------------------------- Hugging Face datasets


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """'name[/config][:split]' -> (name, config, split). 'org/name/config' keeps the org in the name.

    A two-part 'a/b' is read as the hub id a/b (use --hf-config for a config of a one-part name, or
    write 'a/b/config').
    """
    name, _, split = spec.partition(":")
    parts = name.split("/")
    if len(parts) == 3:
        return f"{parts[0]}/{parts[1]}", parts[2], split or "train"
    if len(parts) > 3 or not all(parts):
        raise DeferralError(f"--data {spec} is not a file, a folder or a dataset name[/config][:split]: check it")
    return name, None, split or "train"


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _hf_corpus(spec: str, column: str, config: str | None) -> Corpus:
    import datasets

    path = Path(spec.partition(":")[0])
    if _is_saved_dataset(path):
        split = spec.partition(":")[2] or "train"
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DeferralError(f"{path} has no split '{split}' (splits: {', '.join(ds)}): use {path}:SPLIT")
            ds = ds[split]
        desc = {"kind": "hf-disk", "spec": spec, "split": split, "fingerprint": ds._fingerprint}
    else:
        name, parsed_config, split = parse_hf_spec(spec)
        config = config or parsed_config
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as exc:  # hub, network and config errors come in many types
            raise DeferralError(
                f"could not load Hugging Face dataset '{name}' (config {config}, split {split}): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}: check the name, config, split and network"
            ) from None
        desc = {"kind": "hf", "spec": spec, "name": name, "config": config, "split": split,
                "fingerprint": ds._fingerprint}
    if column not in ds.column_names:
        raise _column_error(spec, column, ds.column_names)
    desc.update(text_column=column, rows=len(ds))
    ds = ds.select_columns([column])

    def documents():
        for batch in ds.iter(batch_size=256):
            for value in batch[column]:
                yield value or ""

    return Corpus(desc, documents)


# ---------------------------------------------------------------- entry point


def open_corpus(spec: str, text_column: str = "text", txt_docs: str = "paragraph", hf_config: str | None = None) -> Corpus:
    """A Corpus for a `--data` spec (see the module docstring)."""
    if not spec:
        raise DeferralError("--data is empty: give stdlib, a file, a folder or a Hugging Face dataset name")
    if txt_docs not in ("paragraph", "line", "file"):
        raise DeferralError(f"--txt-docs {txt_docs} is unknown: use paragraph, line or file")
    head, _, part = spec.partition(":")
    if head == "stdlib" and not Path(spec).exists():
        part = part or "train"
        files = stdlib_files(part)
        extra = {"part": part, "heldout_percent": STDLIB_HELDOUT_PERCENT, "python": sys.version.split()[0]}
        return _many_files_corpus("stdlib", spec, files, stdlib_root(), _read_text_once, extra)
    if head in ("stdlib-docs", "instructions") and not Path(spec).exists():
        from training.logs.prose_corpora import open_prose_corpus

        return open_prose_corpus(head, spec, part or "train")
    if head == "mixed" and not Path(spec).exists():
        from training.logs.mixed_corpus import open_mixed_corpus

        return open_mixed_corpus(part or "train", open_corpus)
    if _is_saved_dataset(Path(head)):
        return _hf_corpus(spec, text_column, hf_config)
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DeferralError(
                f"folder {path} holds no text or source files ({', '.join(sorted(TEXT_SUFFIXES)[:6])}, ...): check --data"
            )
        return _many_files_corpus("directory", spec, files, path, _read_text_once, {})
    files = _local_files(spec)
    if files is not None:
        def reader(p):
            return _file_documents(p, text_column, txt_docs)

        extra = {"text_column": text_column, "txt_docs": txt_docs}
        return _many_files_corpus("files", spec, files, None, reader, extra)
    if spec.endswith((".txt", ".jsonl", ".parquet")) or spec.startswith((".", "/", "~")):
        raise DeferralError(f"--data {spec} does not exist: check the path")
    return _hf_corpus(spec, text_column, hf_config)


def _read_text_once(path: Path) -> Iterator[str]:
    yield _read_text(path)
