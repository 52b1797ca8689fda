"""Router training killed with SIGKILL resumes to the uninterrupted run's weights, bit for bit.

configs/router.yaml trains with `trainer.deterministic: true`; rerunning a killed `deferral train fit`
resumes from checkpoints/last.ckpt (written after every epoch). The resumed run must end where the
uninterrupted one ends: same weights, optimizer and scheduler state, early-stopping and best-checkpoint
bookkeeping, and the same exported router. Both runs are real `python -m deferral.cli` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.router_helpers import CONFIG, log_tiny

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 8
KILL_AFTER_EPOCH = 1  # kill once last.ckpt holds this epoch: the run dies during the next one


def fit_command(log: Path, root: Path) -> list[str]:
    # batches of 64 rows: ~40 steps an epoch, so the data order matters; dropout 0.1 draws random
    # numbers in every step, so the random state of the resumed epochs matters as well
    return [
        sys.executable, "-m", "deferral.cli", "train", "fit", "--config", CONFIG, "--data.path", str(log),
        "--trainer.max_epochs", str(EPOCHS), "--trainer.default_root_dir", str(root),
        "--data.target", "gap_nll", "--model.objective", "classify", "--data.batch_size", "64",
        "--model.dropout", "0.1", "--mlflow.tracking_uri", "none", "--trainer.enable_progress_bar", "false",
    ]


def run(command: list[str], stderr: Path) -> subprocess.CompletedProcess:
    with open(stderr, "w") as err:
        return subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, timeout=300)


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    except FileNotFoundError:  # not written yet (it is renamed into place whole)
        return None


def kill_after_epoch(command: list[str], last: Path, epoch: int, stderr: Path) -> int:
    """Start `command`, SIGKILL it as soon as `last` holds `epoch` or later; return last.ckpt's epoch."""
    with open(stderr, "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    deadline, seen = time.monotonic() + 240, None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                stat = last.stat()
                version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                version = None
            if version is not None and version != seen:
                seen = version
                if (checkpoint_epoch(last) or 0) >= epoch:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended (exit {proc.returncode}) before it could be killed after epoch {epoch}: "
        f"train on more epochs or more rows\n{stderr.read_text()[-3000:]}"
    )
    return checkpoint_epoch(last)


def callback_states(ckpt: dict) -> dict:
    """Early stopping and best-checkpoint bookkeeping, without the run folder's paths."""
    keep = ("wait_count", "stopped_epoch", "best_score", "best_model_score", "current_score", "best_k_models")
    out = {}
    for name, state in ckpt["callbacks"].items():
        for key in keep:
            if key in state:
                value = state[key]
                if key == "best_k_models":  # {path: score}
                    value = sorted(float(v) for v in value.values())
                out[f"{name.split('{')[0]}.{key}"] = value
    return out


def assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_killed_run_resumes_to_the_uninterrupted_weights(tiny_dir, tmp_path):
    log = log_tiny(tiny_dir, tmp_path / "log")

    straight = tmp_path / "straight"
    done = run(fit_command(log, straight), tmp_path / "straight.err")
    assert done.returncode == 0, (tmp_path / "straight.err").read_text()[-3000:]

    resumed = tmp_path / "resumed"
    last = resumed / "checkpoints" / "last.ckpt"
    killed_at = kill_after_epoch(fit_command(log, resumed), last, KILL_AFTER_EPOCH, tmp_path / "killed.err")
    # the kill came mid-training: epochs are left for the rerun to train
    assert KILL_AFTER_EPOCH <= killed_at < EPOCHS - 1, killed_at
    assert not (resumed / "export").exists()

    again = run(fit_command(log, resumed), tmp_path / "resumed.err")
    err = (tmp_path / "resumed.err").read_text()
    assert again.returncode == 0, err[-3000:]
    assert f"resuming from {last}" in err
    assert not list(last.parent.glob(".*partial"))  # a write cut by the kill is written again and renamed

    a = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["epoch"] == EPOCHS - 1, "early stopping ended the run: the comparison would cover fewer epochs"
    assert_same(a["state_dict"], b["state_dict"], "state_dict")
    assert_same(a["optimizer_states"], b["optimizer_states"], "optimizer_states")
    assert_same(a["lr_schedulers"], b["lr_schedulers"], "lr_schedulers")
    assert_same(callback_states(a), callback_states(b), "callbacks")

    best_a = torch.load(straight / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    best_b = torch.load(resumed / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best_a["epoch"] == best_b["epoch"]
    assert_same(best_a["state_dict"], best_b["state_dict"], "best.state_dict")

    exported_a = load_file(straight / "export" / "router.safetensors")
    exported_b = load_file(resumed / "export" / "router.safetensors")
    assert exported_a.keys() == exported_b.keys() and exported_a
    for name in exported_a:
        assert torch.equal(exported_a[name], exported_b[name]), name
