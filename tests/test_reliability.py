"""Reliability: runs that resume, refuse or warn instead of silently mixing or losing results.

Each test runs the real `deferral` entry point on the tiny pair (tests/conftest.py) or a synthetic log.
"""

from __future__ import annotations

import json

import pytest
import torch

from deferral.cli import main as deferral
from deferral.features import FeatureSpec
from deferral.router import Router, RouterConfig, save_router
from tests.single_thread import one_thread  # noqa: F401  (autouse)


def one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def export_random_router(folder, pair_identity: dict, seed: int = 0):
    """A router export with random weights for the default feature layout of `pair_identity`."""
    torch.manual_seed(seed)
    spec = FeatureSpec()
    router = Router(RouterConfig(num_features=spec.dim, hidden=8, layers=1, objective="regress"))
    return save_router(folder, router, {"feature_spec": spec.to_dict(), "pair": pair_identity, "objective": "regress"})


# --- deferral evaluate ------------------------------------------------------------------------


def evaluate(tiny_dir, task_file, out, router, *extra) -> int:
    return deferral([
        "evaluate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
        "--task", f"hf:{task_file}", "--rules", "[learned]", "--router", str(router), "--thresholds", "[0.0]",
        "--modes", "[speculative]", "--max-new-tokens", "4", "--no-fidelity", "--no-mlflow", "--out", str(out), *extra,
    ])


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "def f(x):", "reference": "x"}) + "\n")
    return path


def test_evaluate_refuses_another_router_in_a_folder_with_learned_rows(tiny_dir, tiny_pair, task_file, tmp_path, capsys):
    first = export_random_router(tmp_path / "r1", tiny_pair.identity(), seed=1)
    second = export_random_router(tmp_path / "r2", tiny_pair.identity(), seed=2)
    out = tmp_path / "eval"
    assert evaluate(tiny_dir, task_file, out, first) == 0
    rows = (out / "results.jsonl").read_text()
    assert "learned|speculative|threshold=0|K=5" in rows
    capsys.readouterr()
    assert evaluate(tiny_dir, task_file, out, second) == 2
    one_error_line(capsys, "another setup", "router", "--out")
    assert (out / "results.jsonl").read_text() == rows
    assert evaluate(tiny_dir, task_file, out, first) == 0  # the same router resumes


def test_evaluate_refuses_a_router_of_another_pair_before_decoding(tiny_dir, tiny_pair, task_file, tmp_path, capsys):
    other = {**tiny_pair.identity(), "vocab_size": tiny_pair.vocab_size + 8}
    router = export_random_router(tmp_path / "r", other)
    out = tmp_path / "eval"
    assert evaluate(tiny_dir, task_file, out, router) == 2
    one_error_line(capsys, "another pair")
    assert not (out / "results.jsonl").exists()  # no reference row was decoded first
