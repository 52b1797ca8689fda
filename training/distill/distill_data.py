"""Corpus for drafter distillation: code and English prose from local files, split by package.

Sources are folders (or the aliases `stdlib`, `site-packages`, `docs`). Every file belongs to a *unit*,
its top-level package or document folder; whole units are held out (by a hash of the unit's name, plus
any unit named in `holdout_units`), so held-out text shares no file and no package with training text.

Kinds of text:
- code: `.py` files, as they are;
- prose: Markdown/reStructuredText/plain-text files, package descriptions (`METADATA`) and long
  docstrings pulled out of `.py` files, each kept only when it reads like English.
"""

from __future__ import annotations

import ast
import hashlib
import multiprocessing
import os
import re
import site
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from deferral.errors import DeferralError
from training.logs.corpora import is_heldout as stdlib_is_heldout
from training.logs.corpora import stdlib_root

PROSE_SUFFIXES = {".md", ".rst", ".txt"}
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages", "node_modules"}
MAX_FILE_BYTES = 400_000  # generated tables and vendored blobs are not useful text
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass
class Document:
    kind: str  # "code" | "prose"
    unit: str  # top-level package / folder: the unit of the held-out split
    text: str
    heldout: bool = False  # forced: a file of the standard library's held-out part (training.logs.corpora)


def resolve_roots(sources: list[str]) -> list[Path]:
    """Turn source names into existing folders; aliases name this Python's own files."""
    roots: list[Path] = []
    for source in sources:
        if source == "stdlib":
            roots.append(Path(sysconfig.get_paths()["stdlib"]))
        elif source == "site-packages":
            roots.extend(Path(p) for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]))
        elif source == "docs":
            roots.extend(Path(p) for p in ("/usr/share/doc",))
        else:
            roots.append(Path(os.path.expanduser(source)))
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing and len(missing) == len(roots):
        raise DeferralError(f"no corpus folder exists ({', '.join(missing)}): pass --data with existing folders")
    return [r for r in roots if r.is_dir()]


def english_score(text: str) -> float:
    """Share of characters inside alphabetic words: ~0.7+ for prose, ~0.4 for code or tables."""
    if not text:
        return 0.0
    return sum(len(w) for w in _WORD.findall(text)) / len(text)


def is_heldout(unit: str, fraction: float, named: set[str]) -> bool:
    if unit in named:
        return True
    digest = int(hashlib.sha256(unit.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def docstrings(source: str, min_chars: int = 200) -> list[str]:
    """Long docstrings of a Python file (module, classes, functions), dedented."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                out.append(doc)
    return out


def _metadata_description(text: str) -> str:
    """The long description of a dist-info METADATA file (after the first blank line)."""
    head, _, body = text.partition("\n\n")
    return body


def _unit_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).parts
    name = rel[0] if len(rel) > 1 else path.stem
    for suffix in (".dist-info", ".egg-info", ".data"):
        if name.endswith(suffix):
            name = name[: -len(suffix)].split("-")[0].lower()  # pkg-1.2.dist-info -> pkg
    # No root name in the unit: the same package is held out on every machine and Python version.
    return name


def _list_files(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(root, file) pairs of candidate files, sorted within each root so the order is deterministic."""
    out, seen = [], set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            # Installed packages inside a stdlib folder are read through the site-packages root instead.
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                suffix = path.suffix.lower()
                if (suffix == ".py" or suffix in PROSE_SUFFIXES or name == "METADATA") and path not in seen:
                    seen.add(path)
                    out.append((root, path))
    return out


def _file_documents(item: tuple[Path, Path, Path, float]) -> list[Document]:
    """The documents of one file: the code itself and/or its English prose pieces."""
    root, path, stdlib, min_english = item
    try:
        if path.is_symlink() or path.stat().st_size > MAX_FILE_BYTES:
            return []
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    unit = _unit_of(path, root)
    # Files the router's logging holds out of the standard library stay out of distillation too.
    forced = path.is_relative_to(stdlib) and stdlib_is_heldout(path.relative_to(stdlib).as_posix())
    docs = []
    if path.suffix.lower() == ".py":
        if text.strip():
            docs.append(Document("code", unit, text, forced))
        pieces = docstrings(text)
    else:
        pieces = [_metadata_description(text) if path.name == "METADATA" else text]
    docs += [Document("prose", unit, p, forced) for p in pieces if len(p) >= 200 and english_score(p) >= min_english]
    return docs


def read_documents(roots: list[Path], max_chars: dict[str, int], min_english: float = 0.6,
                   workers: int | None = None) -> list[Document]:
    """Read and classify every file under the roots (in parallel, results in a fixed order).

    max_chars caps each kind, counted in file order, so a huge site-packages cannot blow up time.
    """
    files = _list_files(roots)
    stdlib = stdlib_root()
    items = [(root, path, stdlib, min_english) for root, path in files]
    used = {"code": 0, "prose": 0}
    docs: list[Document] = []
    workers = workers or min(16, os.cpu_count() or 1)
    ctx = multiprocessing.get_context("fork") if workers > 1 else None
    pool = ctx.Pool(workers) if ctx else None
    try:
        results = pool.imap(_file_documents, items, chunksize=32) if pool else map(_file_documents, items)
        for file_docs in tqdm(results, total=len(items), desc="corpus", unit="file", mininterval=5):
            for d in file_docs:
                if used[d.kind] < max_chars[d.kind]:
                    docs.append(d)
                    used[d.kind] += len(d.text)
            if all(used[k] >= max_chars[k] for k in used):
                break
    finally:
        if pool:
            pool.terminate()
    return docs


def split_documents(docs: list[Document], heldout_fraction: float, heldout_units: list[str]) -> tuple[list, list]:
    named = set(heldout_units)
    train, heldout = [], []
    for d in docs:
        (heldout if d.heldout or is_heldout(d.unit, heldout_fraction, named) else train).append(d)
    return train, heldout


def tokenize(tokenizer, texts: list[str], batch: int = 256) -> list[list[int]]:
    """Token ids per text, no special tokens (the fast tokenizer batches across threads)."""
    out: list[list[int]] = []
    for i in range(0, len(texts), batch):
        out.extend(tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"])
    return out


def pack_blocks(token_lists: list[list[int]], block: int, separator: int) -> torch.Tensor:
    """Concatenate documents (separator between) and cut into (N, block) rows; the tail is dropped."""
    flat: list[int] = []
    for ids in token_lists:
        flat.extend(ids)
        flat.append(separator)
    n = len(flat) // block
    return torch.tensor(flat[: n * block], dtype=torch.int32).view(n, block)


CHAT_TEMPLATES = {
    "code": [
        "Write a Python function that {summary}",
        "Explain what this Python code does:\n```python\n{snippet}\n```",
        "Complete this Python code:\n```python\n{snippet}\n```",
        "Write unit tests for this function:\n```python\n{snippet}\n```",
        "Find the bug in this code and fix it:\n```python\n{snippet}\n```",
    ],
    "prose": [
        "Summarize the following text:\n\n{snippet}",
        "Explain this in simple terms:\n\n{snippet}",
        "{summary}",
        "Write a short paragraph about {topic}.",
        "Continue this text:\n\n{snippet}",
    ],
}


def _first_sentence(text: str) -> str:
    line = " ".join(text.strip().split())
    cut = line.find(". ")
    return (line[: cut + 1] if 0 < cut < 200 else line[:200]).strip()


def chat_prompts(docs: list[Document], count: int, generator: torch.Generator, snippet_chars: int = 600) -> list[str]:
    """User messages built from training documents (templates above), for the target to answer."""
    if not docs:
        return []
    prompts = []
    picks = torch.randint(0, len(docs), (count,), generator=generator).tolist()
    for n, i in enumerate(picks):
        doc = docs[i]
        templates = CHAT_TEMPLATES[doc.kind]
        template = templates[n % len(templates)]
        start = int(torch.randint(0, max(1, len(doc.text) - snippet_chars), (1,), generator=generator))
        snippet = doc.text[start : start + snippet_chars].strip()
        if doc.kind == "code":
            summary = _first_sentence(docstrings(doc.text, 20)[0]) if "{summary}" in template and docstrings(doc.text, 20) else ""
            if "{summary}" in template and not summary:
                template = templates[1]
        else:
            summary = _first_sentence(snippet)
        topic = " ".join(_WORD.findall(snippet)[:4]) or "Python"
        prompts.append(template.format(summary=summary.rstrip(".").lower() if doc.kind == "code" else summary,
                                       snippet=snippet, topic=topic))
    return prompts


def raw_prefixes(blocks: torch.Tensor, count: int, length: int, generator: torch.Generator) -> list[list[int]]:
    """Random `length`-token windows of training blocks: prompts for plain (non-chat) continuations."""
    if blocks.numel() == 0:
        return []
    rows = torch.randint(0, blocks.shape[0], (count,), generator=generator)
    starts = torch.randint(0, max(1, blocks.shape[1] - length), (count,), generator=generator)
    return [blocks[r, s : s + length].tolist() for r, s in zip(rows.tolist(), starts.tolist())]
