"""Shared fixtures: tiny drafter/target pairs saved to disk once per test session."""

from __future__ import annotations

import os

import pytest
import torch

from tests.tiny_models import make_model

# Tiny models gain nothing from intra-op threads, and thread spinning on a busy 2-core machine makes
# them many times slower; subprocesses started by tests (the real CLI) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_model(root / "drafter", layers=1, hidden=32, seed=1, scale=4.0)
    make_model(root / "target", layers=2, hidden=64, seed=2, scale=4.0)
    # Same tokenizer, embedding matrix padded by 8 rows (as Qwen2.5 0.5B vs 7B).
    make_model(root / "target_padded", layers=2, hidden=64, seed=3, vocab_pad=8, scale=4.0)
    # A different tokenizer (two extra tokens).
    make_model(root / "other_tokenizer", layers=1, hidden=32, seed=4, extra=["<x>", "<y>"])
    return root


@pytest.fixture(scope="session")
def tiny_pair(tiny_dir):
    from deferral.pair import load_pair

    return load_pair(str(tiny_dir / "drafter"), str(tiny_dir / "target"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep model caches of the tests away from the user's, unless a cache is given explicitly."""
    if "DEFERRAL_CACHE_DIR" not in os.environ:
        os.environ["DEFERRAL_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
