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
from tests.router_helpers import CONFIG, write_synthetic_log
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


# --- deferral train fit: resume only the same run, from a checkpoint of every epoch --------------


def fit(log, root, *extra, epochs: int = 3) -> int:
    """Train without MLflow; best.ckpt tracks `epoch` (mode min), so it is written at epoch 0 only."""
    return deferral([
        "train", "fit", "--config", CONFIG, "--data.path", str(log), "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(root), "--data.target", "gap_nll", "--model.objective", "classify",
        "--model.hidden", "8", "--mlflow.tracking_uri", "none", "--trainer.enable_progress_bar", "false",
        "--checkpoint.monitor", "epoch", "--checkpoint.mode", "min", "--early_stopping.patience", "10", *extra,
    ])


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("fit")
    log = write_synthetic_log(base / "log", docs=12, per_doc=100)
    assert fit(log, base / "run") == 0
    return base


def test_last_checkpoint_is_written_every_epoch(trained_root):
    ckpts = trained_root / "run" / "checkpoints"
    assert torch.load(ckpts / "best.ckpt", weights_only=False)["epoch"] == 0  # the monitored value never improved
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 2  # yet every epoch is kept
    assert not list(ckpts.glob(".*partial"))


@pytest.mark.parametrize("change, fragment", [
    (("--data.target", "mismatch"), "data.target was 'gap_nll', now 'mismatch'"),
    (("--model.hidden", "16"), "model.hidden was 8, now 16"),
    ((), "another logged dataset"),
])
def test_resume_with_other_data_target_or_model_is_refused(trained_root, tmp_path, capsys, change, fragment):
    log = trained_root / "log"
    if not change:  # the same path, logged again with other rows
        log = write_synthetic_log(tmp_path / "other-log", docs=12, per_doc=100, seed=5)
    before = (trained_root / "run" / "checkpoints" / "last.ckpt").read_bytes()
    assert fit(log, trained_root / "run", *change, epochs=4) == 2
    one_error_line(capsys, fragment, "--trainer.default_root_dir")
    assert (trained_root / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


def test_an_unreadable_last_checkpoint_is_one_line(trained_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "run"
    shutil.copytree(trained_root / "run", root)
    last = root / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut by a kill
    assert fit(trained_root / "log", root, epochs=4) == 2
    one_error_line(capsys, "last.ckpt cannot be read", "best.ckpt")


def test_checkpoints_are_written_aside_and_renamed(tmp_path, monkeypatch):
    """A write killed half-way leaves the previous checkpoint whole."""
    from lightning.fabric.plugins.io import torch_io

    from training.checkpoints import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {}, "epoch": 1}, path)

    def cut_write(checkpoint, target):
        with open(target, "wb") as f:
            f.write(b"PK\x03")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "_atomic_save", cut_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {}, "epoch": 2}, path)
    assert torch.load(path, weights_only=False)["epoch"] == 1


# --- deferral log: one writer per output folder -------------------------------------------------


def log_args(tiny_dir, corpus, out):
    return ["log", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"), "--data", str(corpus),
            "--out", str(out), "--no-tracking", "--no-progress"]


def test_a_second_log_process_on_one_out_is_refused(tiny_dir, tmp_path, capsys):
    """Another process holds OUT/.lock: this one refuses before writing anything."""
    import subprocess
    import sys

    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x\n\nimport os\nprint(os.sep)\n")
    out = tmp_path / "log"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); f.write('4242\\n'); f.flush(); print('held', flush=True); time.sleep(60)",
         str(out / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert deferral(log_args(tiny_dir, corpus, out)) == 2
        one_error_line(capsys, str(out), "another `deferral log` process (pid 4242)", "--out")
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert deferral(log_args(tiny_dir, corpus, out)) == 0  # the lock dies with its process
    assert (out / "progress.json").is_file()
