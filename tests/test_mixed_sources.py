"""Training on some sources of the mixed corpus: document ids map back to the source they came from."""

from __future__ import annotations

import numpy as np
import pytest

from deferral.errors import DeferralError
from tests.test_log import log_args, write_corpus
from training.logs.corpus import Corpus
from training.logs.log_cli import main as log_main
from training.logs.mixed_corpus import SOURCE_NAMES, mixed_document_sources, open_mixed_corpus, round_robin_sources
from training.router.datamodule import FeatureDataModule


def _fake_sources(counts: dict[str, int]):
    """open_corpus stand-in over literal documents named after their source and index."""
    def open_corpus(spec: str) -> Corpus:
        name = spec.split(":")[0]
        return Corpus({"kind": name}, lambda: (f"{name}#{i}" for i in range(counts[name])))
    return open_corpus


@pytest.mark.parametrize("counts", [(3, 3, 3), (2, 5, 1), (4, 0, 2), (1, 1, 7)])
def test_round_robin_sources_inverts_the_mix(counts):
    open_corpus = _fake_sources(dict(zip(SOURCE_NAMES, counts)))
    docs = list(open_mixed_corpus("train", open_corpus).documents())
    expected = [doc.split("#")[0].removeprefix("\x1echat\x1e") for doc in docs]
    ids = np.arange(len(docs))
    got = np.asarray(SOURCE_NAMES)[round_robin_sources(list(counts), ids)]
    assert got.tolist() == expected
    meta = {"kind": "mixed", "part": "train"}
    assert mixed_document_sources(meta, ids[::-1], open_corpus).tolist() == expected[::-1]
    with pytest.raises(DeferralError, match="past the mix"):
        round_robin_sources(list(counts), np.array([len(docs)]))


def test_source_filter_needs_a_mixed_log():
    with pytest.raises(DeferralError, match="mixed corpus"):
        mixed_document_sources({"kind": "text"}, np.arange(3), _fake_sources({}))
    with pytest.raises(DeferralError, match="names no source"):
        FeatureDataModule(path="x", sources=["poetry"])


def test_datamodule_keeps_only_the_chosen_sources(tiny_dir, tmp_path):
    out = tmp_path / "mixed"
    # the mix's first 9 documents: 3 of code, 3 of prose, 3 instructions (logged as plain text here)
    assert log_main(log_args(tiny_dir, "mixed:train", out, "--max-docs", "9", "--doc-chars", "400")) == 0
    full = FeatureDataModule(path=str(out), target="mismatch")
    full.setup()
    code = FeatureDataModule(path=str(out), target="mismatch", sources=["stdlib"])
    code.setup()
    all_docs = np.unique(full.arrays.columns["doc_id"])
    assert all_docs.tolist() == list(range(9))
    kept = np.unique(code.arrays.columns["doc_id"])
    assert kept.tolist() == [0, 3, 6]  # the round-robin puts code first in every group of three
    rows = np.isin(full.arrays.columns["doc_id"], kept)
    np.testing.assert_array_equal(code.arrays.features, full.arrays.features[rows])
    assert code.description()["sources"] == ["stdlib"]
    with pytest.raises(DeferralError, match="mixed corpus"):
        corpus = write_corpus(tmp_path / "c.txt", docs=4)
        plain = tmp_path / "plain"
        assert log_main(log_args(tiny_dir, corpus, plain)) == 0
        FeatureDataModule(path=str(plain), target="mismatch", sources=["stdlib"]).setup()
