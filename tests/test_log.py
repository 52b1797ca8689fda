"""`deferral log` on the tiny pair: columns, features, labels, metadata, resumption and errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deferral.cli import main as cli_main
from deferral.errors import DeferralError
from deferral.features import FeatureSpec, compute_features
from tests.labels_helper import token_labels as compute_labels
from training.logs import logged_data as fmt
from training.logs.corpora import open_corpus
from training.logs.log_cli import main as log_main
from training.logs.log_pipeline import make_windows, rows_from_logits

WORDS = "the quick brown fox jumps over a lazy dog while def return import class if else".split()


def write_corpus(path: Path, docs: int, seed: int = 0, low: int = 5, high: int = 60) -> Path:
    rng = random.Random(seed)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(docs)]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def pair_flags(tiny_dir) -> list[str]:
    return ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target")]


def log_args(tiny_dir, data, out, *extra) -> list[str]:
    return [*pair_flags(tiny_dir), "--data", str(data), "--out", str(out), "--no-tracking", "--no-progress",
            "--max-len", "48", "--batch-size", "4", *extra]


def arrays(ds) -> dict[str, np.ndarray]:
    table = ds.with_format("numpy")
    return {c: np.asarray(table[c]) for c in ds.column_names}


@pytest.fixture(scope="module")
def logged(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    corpus = write_corpus(root / "corpus.txt", docs=12)
    out = root / "out"
    assert log_main(log_args(tiny_dir, corpus, out, "--docs-per-shard", "5")) == 0
    return corpus, out


def test_dataset_opens_and_has_the_contract_columns(logged):
    import datasets

    corpus, out = logged
    ds, meta = fmt.load_logged(out)
    assert ds.column_names == fmt.COLUMNS
    assert fmt.COLUMNS[fmt.COLUMNS.index("features") + 1:] == [
        "label_mismatch", "label_accept_prob", "label_gap01", "label_gap_nll",
        "label_ll_drop", "label_path_drop", "label_rollout_chrf", "label_same_line", "label_ref_gain", "tv"]
    # reference logs hold no consequence labels: NaN, never a value that could pass for one
    assert np.isnan(arrays(ds)["label_rollout_chrf"]).all()
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    assert ds.features["features"].length == spec.dim
    for name, dtype in [("doc_id", "int64"), ("position", "int32"), ("token_id", "int32"), ("drafted_id", "int32"),
                        ("label_mismatch", "int8"), ("label_accept_prob", "float32"), ("tv", "float32")]:
        assert ds.features[name].dtype == dtype
    # The same rows through datasets' own loader.
    plain = datasets.load_from_disk(str(out))
    assert plain.num_rows == ds.num_rows
    np.testing.assert_array_equal(arrays(plain)["features"], arrays(ds)["features"])
    # Metadata per the contract.
    assert meta["format"] == "deferral-log" and meta["format_version"] == 1 and meta["mode"] == "reference"
    assert set(meta["labels"]) == set(fmt.COLUMNS[fmt.COLUMNS.index("features") + 1:])
    assert meta["pair"]["vocab_size"] > 0 and meta["corpus"]["kind"] == "files"
    assert {"torch", "transformers", "datasets"} <= set(meta["library_versions"])
    # 12 paragraphs, one row per next token of each.
    a = arrays(ds)
    assert sorted(set(a["doc_id"].tolist())) == list(range(12))
    order = np.lexsort((a["position"], a["doc_id"]))
    np.testing.assert_array_equal(order, np.arange(len(order)))


def test_rows_match_a_fresh_computation(logged, tiny_pair):
    """Features and labels equal compute_features / compute_labels on the models' own logits."""
    corpus, out = logged
    ds, _ = fmt.load_logged(out)
    a = arrays(ds)
    text = list(open_corpus(str(corpus)).documents())[3]
    ids = tiny_pair.tokenizer(text)["input_ids"]
    v = tiny_pair.vocab_size
    q_parts, p_parts, y_parts = [], [], []
    for w in make_windows(3, ids, 48):  # documents longer than a window are scored window by window
        x = torch.tensor([w.tokens])
        with torch.no_grad():
            q_parts.append(tiny_pair.drafter.model(x).logits[0, :-1, :v])
            p_parts.append(tiny_pair.target.model(x).logits[0, :-1, :v])
        y_parts.append(x[0, 1:])
    q, p, y = torch.cat(q_parts), torch.cat(p_parts), torch.cat(y_parts)
    rows = a["doc_id"] == 3
    assert rows.sum() == len(ids) - 1
    np.testing.assert_array_equal(a["position"][rows], np.arange(len(ids) - 1))
    np.testing.assert_array_equal(a["token_id"][rows], np.array(ids[1:]))
    drafted = q.argmax(-1)
    np.testing.assert_array_equal(a["drafted_id"][rows], drafted.numpy())
    expected = compute_features(q, p, drafted[:, None])[:, 0, :].numpy()
    np.testing.assert_allclose(a["features"][rows], expected, rtol=1e-4, atol=1e-5)
    labels = compute_labels(q, p, y, drafted)
    for name, value in labels.items():
        np.testing.assert_allclose(a[name][rows], value.numpy(), rtol=1e-4, atol=1e-5)


def test_rows_from_logits_is_the_shared_feature_function():
    torch.manual_seed(0)
    q, p = torch.randn(50, 30), torch.randn(50, 30)
    y = torch.randint(0, 30, (50,))
    rows = rows_from_logits(q, p, y)
    assert torch.equal(rows["features"], compute_features(q, p, q.argmax(-1)[:, None])[:, 0, :])
    assert torch.equal(rows["drafted_id"], q.argmax(-1))


def test_windows_cover_each_prediction_once():
    ids = list(range(100))
    windows = make_windows(0, ids, 16)
    predicted = [w.start + t for w in windows for t in range(w.log_from, len(w.tokens) - 1)]
    assert predicted == list(range(99))
    assert all(len(w.tokens) <= 16 for w in windows)
    assert make_windows(0, [5], 16) == []


def test_hidden_states_and_cli_entry(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=3)
    out = tmp_path / "out"
    assert cli_main(["log", *log_args(tiny_dir, corpus, out, "--hidden", "both")]) == 0
    ds, meta = fmt.load_logged(out)
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    assert (spec.drafter_hidden, spec.target_hidden) == (32, 64)
    assert ds.features["features"].length == spec.dim == FeatureSpec().dim + 96
    fmt.check_feature_spec(meta, spec)
    with pytest.raises(DeferralError, match="re-log with this version"):
        fmt.check_feature_spec(meta, FeatureSpec())


def test_limits(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=10)
    out = tmp_path / "docs"
    log_main(log_args(tiny_dir, corpus, out, "--max-docs", "4", "--docs-per-shard", "3"))
    ds, _ = fmt.load_logged(out)
    assert sorted(set(ds["doc_id"])) == [0, 1, 2, 3]
    # --max-positions stops inside a long document: the first rows of an unlimited run, no more.
    long_doc = tmp_path / "long.txt"
    long_doc.write_text(" ".join(WORDS * 30))
    limited, full = tmp_path / "positions", tmp_path / "full"
    log_main(log_args(tiny_dir, long_doc, limited, "--max-positions", "100"))
    log_main(log_args(tiny_dir, long_doc, full))
    a, b = arrays(fmt.load_logged(limited)[0]), arrays(fmt.load_logged(full)[0])
    assert len(a["doc_id"]) == 100 and len(b["doc_id"]) > 1000
    for column in ["doc_id", "position", "token_id", "drafted_id"]:
        np.testing.assert_array_equal(a[column], b[column][:100])
    np.testing.assert_allclose(a["features"], b["features"][:100], rtol=1e-5, atol=1e-6)
    # --doc-chars keeps each document's head: the same rows as the whole document, up to its end.
    heads = tmp_path / "heads"
    log_main(log_args(tiny_dir, long_doc, heads, "--doc-chars", "60"))
    c = arrays(fmt.load_logged(heads)[0])
    assert 0 < len(c["doc_id"]) < 60
    np.testing.assert_array_equal(c["token_id"], b["token_id"][: len(c["token_id"])])


def test_resume_with_other_arguments_is_refused(logged, tiny_dir):
    corpus, out = logged
    with pytest.raises(DeferralError, match="different arguments.*max_docs"):
        log_main(log_args(tiny_dir, corpus, out, "--docs-per-shard", "5", "--max-docs", "3"))
    # The same arguments on a finished folder: nothing new, same rows.
    before = fmt.load_logged(out)[0].num_rows
    assert log_main(log_args(tiny_dir, corpus, out, "--docs-per-shard", "5")) == 0
    assert fmt.load_logged(out)[0].num_rows == before


@pytest.mark.parametrize(
    "content, message",
    [("", "is empty"), ("\n\n\n", "is empty"), ("a\nb\n", "no positions")],
)
def test_empty_corpus_is_a_clear_error(tiny_dir, tmp_path, content, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text(content)
    with pytest.raises(DeferralError, match=message):
        log_main(log_args(tiny_dir, corpus, tmp_path / "out", "--txt-docs", "line"))


def test_corrupt_documents_are_clear_errors(tiny_dir, tmp_path):
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"text": "fine text here"}\n{"text": broken\n')
    with pytest.raises(DeferralError, match=r"bad.jsonl:2"):
        log_main(log_args(tiny_dir, bad_jsonl, tmp_path / "o1"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00 not utf-8 \x80\x81")
    with pytest.raises(DeferralError, match="not UTF-8"):
        log_main(log_args(tiny_dir, binary, tmp_path / "o2"))


def test_out_folder_that_is_not_a_log_is_refused(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=2)
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DeferralError, match="not a `deferral log` folder"):
        log_main(log_args(tiny_dir, corpus, out))


def test_full_disk_never_leaves_a_finished_shard(tmp_path, monkeypatch):
    import errno

    spec = FeatureSpec()
    rows = {c: np.zeros(3) for c in fmt.COLUMNS}
    rows["features"] = np.zeros((3, spec.dim), dtype=np.float32)
    table = fmt.arrow_table(rows, spec.dim)
    path = fmt.shard_path(tmp_path, 0, 7)

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DeferralError, match="disk .* is full"):
        fmt.write_shard(path, table)
    assert fmt.finished_shards(tmp_path) == {}
    assert list(path.parent.iterdir()) == []  # the temporary file is gone too


def test_kill_9_then_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", docs=30, low=20, high=60)
    flags = ["--docs-per-shard", "2", "--batch-size", "8"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "deferral.cli", "log", *log_args(tiny_dir, corpus, killed, *flags)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(fmt.finished_shards(killed)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = len(fmt.finished_shards(killed))
    assert 2 <= interrupted < 15, "the run should have been killed part-way"
    assert not (killed / "progress.json").exists()
    # Resume, then compare with a run that was never interrupted. Both run as fresh processes like
    # the killed one: global torch state left by other tests in this process (deterministic
    # algorithms, thread settings) can change float rounding in the last bit.
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    whole_cmd = [sys.executable, "-m", "deferral.cli", "log", *log_args(tiny_dir, corpus, whole, *flags)]
    assert subprocess.run(whole_cmd, env=env, capture_output=True).returncode == 0
    a, b = arrays(fmt.load_logged(killed)[0]), arrays(fmt.load_logged(whole)[0])
    for column in fmt.COLUMNS:
        np.testing.assert_array_equal(a[column], b[column], err_msg=column)
    progress = json.loads((killed / "progress.json").read_text())
    assert progress["complete"] and progress["shards"] == 15


def test_the_bar_ends_at_the_position_budget(tiny_dir, tmp_path, capfd):
    """The last chunk decodes past --max-positions and is cut when written; the bar stops at the
    budget instead of turning into a bare counter."""
    import re

    from tests.router_helpers import write_corpus

    corpus = write_corpus(tmp_path / "corpus.txt")
    capfd.readouterr()
    assert cli_main(["log", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                     "--data", str(corpus), "--out", str(tmp_path / "log"), "--max-positions", "700",
                     "--no-tracking"]) == 0
    err = capfd.readouterr().err
    assert "700/700" in err
    assert not re.search(r"\d+pos \[", err)  # tqdm's counter form, shown once n passes total
