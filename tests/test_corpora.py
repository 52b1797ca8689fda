"""Corpus readers: every --data kind, the stdlib split, and clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deferral.errors import DeferralError
from training.logs.corpora import (
    is_heldout,
    open_corpus,
    parse_hf_spec,
    stdlib_files,
    stdlib_root,
)


def docs(spec, **kw) -> list[str]:
    return list(open_corpus(spec, **kw).documents())


def test_stdlib_split_is_deterministic_and_disjoint():
    train, heldout, everything = stdlib_files("train"), stdlib_files("heldout"), stdlib_files("all")
    assert train == stdlib_files("train") and heldout == stdlib_files("heldout")
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert 0.05 < len(heldout) / len(everything) < 0.15
    root = stdlib_root()
    assert all(is_heldout(p.relative_to(root).as_posix()) for p in heldout)
    # Test suites and installed packages stay out.
    assert not any({"test", "tests", "site-packages"} & set(p.relative_to(root).parts) for p in everything)


def test_stdlib_corpus_reads_files_in_order():
    corpus = open_corpus("stdlib:heldout")
    first = next(corpus.documents())
    assert first == stdlib_files("heldout")[0].read_text()
    assert corpus.description["kind"] == "stdlib" and corpus.description["part"] == "heldout"
    assert corpus.description["files"] == len(stdlib_files("heldout"))
    assert open_corpus("stdlib").description["part"] == "train"
    with pytest.raises(DeferralError, match="stdlib:train, stdlib:heldout or stdlib:all"):
        open_corpus("stdlib:bogus")


def test_txt_document_splitting(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n\n\nthree\n")
    assert docs(str(path)) == ["one\ntwo\n", "three\n"]
    assert docs(str(path), txt_docs="line") == ["one", "two", "three"]
    assert docs(str(path), txt_docs="file") == ["one\ntwo\n\n\nthree\n"]


def test_jsonl_parquet_glob_and_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in ["x1", "x2"]) + "\n")
    pq.write_table(pa.table({"body": ["y1", "y2", "y3"]}), tmp_path / "b.parquet")
    assert docs(str(tmp_path / "a.jsonl"), text_column="body") == ["x1", "x2"]
    assert docs(str(tmp_path / "b.parquet"), text_column="body") == ["y1", "y2", "y3"]
    both = f"{tmp_path}/*.*"
    assert docs(both, text_column="body") == ["x1", "x2", "y1", "y2", "y3"]
    listed = f"{tmp_path / 'b.parquet'},{tmp_path / 'a.jsonl'}"
    assert docs(listed, text_column="body") == ["y1", "y2", "y3", "x1", "x2"]
    with pytest.raises(DeferralError, match="no text column 'text'.*--text-column"):
        docs(str(tmp_path / "b.parquet"))
    with pytest.raises(DeferralError, match="no text column 'text'"):
        docs(str(tmp_path / "a.jsonl"))


def test_directory_of_sources(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / "README.md").write_text("# title\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff")  # not a text suffix: skipped
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.py").write_text("skip = 1\n")
    corpus = open_corpus(str(tmp_path))
    assert list(corpus.documents()) == ["# title\n", "def f():\n    return 1\n"]
    assert corpus.description["kind"] == "directory" and corpus.description["files"] == 2
    (tmp_path / "bad.py").write_bytes(b"x = '\xff'\n")
    with pytest.raises(DeferralError, match="bad.py is not UTF-8"):
        docs(str(tmp_path))


def test_fingerprint_follows_content(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("alpha\n")
    before = open_corpus(str(path)).description["sha256"]
    path.write_text("beta!\n")
    assert open_corpus(str(path)).description["sha256"] != before


def test_saved_hugging_face_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": ["p", "q"], "n": [1, 2]}).save_to_disk(str(tmp_path / "hf"))
    corpus = open_corpus(str(tmp_path / "hf"), text_column="content")
    assert list(corpus.documents()) == ["p", "q"]
    assert corpus.description["kind"] == "hf-disk" and corpus.description["rows"] == 2


def test_hf_spec_parsing():
    assert parse_hf_spec("wikitext") == ("wikitext", None, "train")
    assert parse_hf_spec("Salesforce/wikitext/wikitext-2-raw-v1:validation") == (
        "Salesforce/wikitext", "wikitext-2-raw-v1", "validation")
    assert parse_hf_spec("org/name:test") == ("org/name", None, "test")
    with pytest.raises(DeferralError):
        parse_hf_spec("a/b/c/d")


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(DeferralError, match="does not exist"):
        open_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(DeferralError, match="matches no files"):
        open_corpus(str(tmp_path / "*.jsonl"))
    with pytest.raises(DeferralError, match="--data is empty"):
        open_corpus("")


# ---------------------------------------------------------------- stdlib-docs, instructions, held-out sets

EVAL_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"


def test_stdlib_docs_are_deterministic_disjoint_prose():
    from training.logs import prose_corpora as pc
    from training.logs.prose_corpora import DOCSTRING_MIN_CHARS, PROSE_MIN_WORD_SHARE, pydoc_topics, stdlib_docs, word_share

    train, heldout, everything = stdlib_docs("train"), stdlib_docs("heldout"), stdlib_docs("all")
    # (the same documents in the same order in another process: test_corpora_are_the_same_in_another_process)
    assert len(train) > 500 and len(heldout) > 20
    assert not set(train) & set(heldout)
    assert set(everything) == set(train) | set(heldout)
    assert len(set(train)) == len(train)
    assert all(len(d) >= DOCSTRING_MIN_CHARS and word_share(d) >= PROSE_MIN_WORD_SHARE for d in train + heldout)
    assert all(d == d.strip() and all(ln == ln.rstrip() for ln in d.split("\n")) for d in train)
    indented = [d for d in train if all(ln[:1] in " \t" for ln in d.split("\n")[1:])]  # not dedented
    assert len(indented) <= 0.01 * len(train)  # (a docstring whose first line holds an escaped newline)
    # pydoc_data/topics.py hashes into the train part: its topics are training prose, never held out.
    assert not is_heldout("pydoc_data/topics.py")
    topics = list(dict.fromkeys(text for _, text in pydoc_topics() if pc._is_prose_docstring(text)))
    assert topics and train[-len(topics):] == topics and not set(topics) & set(heldout)

    corpus = open_corpus("stdlib-docs")
    assert list(corpus.documents()) == train
    assert corpus.description["kind"] == "stdlib-docs" and corpus.description["part"] == "train"
    assert corpus.description["documents"] == len(train) and corpus.description["topics"] is True
    assert open_corpus("stdlib-docs:heldout").description["sha256"] != corpus.description["sha256"]
    with pytest.raises(DeferralError, match="stdlib-docs:train, stdlib-docs:heldout or stdlib-docs:all"):
        open_corpus("stdlib-docs:bogus")


def test_instructions_are_deterministic_short_and_disjoint():
    from training.logs.prose_corpora import instructions

    train, heldout = instructions("train"), instructions("heldout")
    assert 1000 <= len(train) <= 10000 and heldout
    assert len(set(train)) == len(train) and not set(train) & set(heldout)
    assert all(20 <= len(x) <= 1200 and x == x.strip() for x in train)
    starts = {x.split("`")[0] for x in train}
    for kind in ("Write a Python function ", "Explain what the Python module ", "Summarize in two sentences:",
                 "Rewrite this docstring in plain English:", "Write a short paragraph about "):
        assert any(s.startswith(kind) for s in starts), kind
    corpus = open_corpus("instructions")
    assert corpus.description["kind"] == "instructions" and list(corpus.documents()) == train


def corpora_digest() -> dict[str, str]:
    """sha256 of each stdlib corpus's files or documents, in order, per part."""
    import hashlib

    from training.logs.prose_corpora import instructions, stdlib_docs

    root, parts = stdlib_root(), ("train", "heldout", "all")
    corpora = {"stdlib": [[p.relative_to(root).as_posix() for p in stdlib_files(part)] for part in parts],
               "stdlib-docs": [stdlib_docs(part) for part in parts],
               "instructions": [instructions(part) for part in ("train", "heldout")]}
    return {name: hashlib.sha256(json.dumps(value).encode()).hexdigest() for name, value in corpora.items()}


def test_corpora_are_the_same_in_another_process():
    """Every command reads the stdlib corpora in its own process: other interpreters, with other
    string-hash seeds (so other set orders), give the same files and documents in the same order."""
    import os
    import subprocess
    import sys

    code = "import json; from tests.test_corpora import corpora_digest; print(json.dumps(corpora_digest()))"
    here = corpora_digest()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True,
                              cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(done.stdout.strip().splitlines()[-1]) == here, f"PYTHONHASHSEED={seed}"


def _eval_rows(name: str) -> list[dict]:
    path = EVAL_DATA / name
    assert path.stat().st_size < 3_000_000
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["prose_heldout.jsonl", "code_other.jsonl"])
def test_eval_files_parse_and_cut_at_line_ends(name):
    from collections import Counter

    rows = _eval_rows(name)
    assert len(rows) >= 800
    for row in rows:
        assert isinstance(row["prompt"], str) and isinstance(row["reference"], str) and row["source"]
        assert row["reference"].startswith("\n") and row["reference"].strip()
        assert row["prompt"].strip()
        if name.startswith("prose"):  # the prompt ends on a line of text, without its newline
            assert row["prompt"].split("\n")[-1].strip()
        else:  # cut like the stdlib task: up to 40 context lines (the last may be blank), 4 next lines
            assert row["prompt"].count("\n") < 40 and row["reference"].count("\n") == 4
    assert len({r["prompt"] for r in rows}) == len(rows)
    packages = Counter(r["package"] for r in rows)
    assert len(packages) >= 20 and max(packages.values()) <= 0.1 * len(rows)  # no package dominates
    documents = Counter(r["source"].rsplit(":", 1)[0] for r in rows)
    assert max(documents.values()) <= 5
    lengths = sorted(len(r["prompt"]) for r in rows)
    assert 500 <= lengths[len(lengths) // 2] <= 1600  # about the stdlib continuation task's prompts


def test_eval_files_load_as_hf_task():
    from inference.tasks import make_task

    task = make_task(f"hf:{EVAL_DATA / 'prose_heldout.jsonl'}", limit=3, prompt_column="prompt",
                     reference_column="reference")
    examples = task.examples()
    assert len(examples) == 3 and all(e.reference.startswith("\n") for e in examples)


def test_eval_prompts_are_not_training_prose():
    from training.logs.prose_corpora import stdlib_docs

    docs = stdlib_docs("all")
    lines = {ln.strip() for d in docs for ln in d.split("\n") if len(ln.strip()) >= 40}
    text = "\n\x00\n".join(docs)
    for name in ("prose_heldout.jsonl", "code_other.jsonl"):
        rows = _eval_rows(name)
        for row in rows[::5]:  # a fifth of each file
            assert row["prompt"][-200:] not in text
            if name.startswith("prose"):
                shared = [ln for ln in row["prompt"].split("\n") if len(ln.strip()) >= 40 and ln.strip() in lines]
                assert not shared, (row["source"], shared[:1])
    assert not any(r["package"] in ("deferral", "numpy", "torch", "transformers", "requests")
                   for name in ("prose_heldout.jsonl", "code_other.jsonl") for r in _eval_rows(name))
