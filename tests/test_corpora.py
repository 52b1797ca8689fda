"""Corpus readers: every --data kind, the stdlib split, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest

from deferral.errors import DeferralError
from training.corpora import (
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
