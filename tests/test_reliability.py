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

# datasets binds its logging handler to the stderr of whoever imports it first: import it here, at
# collection, not inside a test whose captured stderr closes afterwards (later tests would then
# print "--- Logging error ---" tracebacks).
import datasets  # noqa: E402, F401
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

    from training.router.checkpoints import AtomicCheckpointIO

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


# --- silent wrong results become refusals or warnings -------------------------------------------


def generate_json(capsys, tiny_dir, *argv):
    code = deferral(["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                     "--json", *argv])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.strip().splitlines()] if code == 0 else [], err


@pytest.mark.parametrize("mode", [(), ("--sequential", "--rule", "chow", "--alpha", "0.5")])
def test_generate_caps_draft_tokens_by_the_context(tiny_dir, capsys, mode):
    args = ("--prompt", "def f(x):", "--max-new-tokens", "8", *mode)
    code, [huge], err = generate_json(capsys, tiny_dir, "--draft-tokens", "10000", *args)
    assert code == 0
    assert ("at most" in err) == (not mode)  # speculative: says that K is capped
    code, [usual], _ = generate_json(capsys, tiny_dir, "--draft-tokens", "5", *args)
    assert huge["new_tokens"] > 0 and huge["tokens"] == usual["tokens"]  # greedy: K changes the cost only


def test_a_prompt_near_the_end_of_the_context_writes_what_fits_or_is_refused(tiny_dir, capsys):
    # tiny models: 256 positions, one character per token; one position stays spare
    code, [row], _ = generate_json(capsys, tiny_dir, "--prompt", "a" * 250, "--max-new-tokens", "8")
    assert code == 0 and 1 <= row["new_tokens"] <= 5
    code, _, err = generate_json(capsys, tiny_dir, "--prompt", "a" * 255, "--sequential", "--rule", "chow")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: ")
    assert "255 tokens" in err and "no room for new tokens" in err and "at most 254" in err


def test_a_null_prompt_is_refused_with_its_line(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def f(x):"}\n{"prompt": null}\n')
    assert deferral(["generate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                     "--prompts", str(prompts)]) == 2
    one_error_line(capsys, "p.jsonl:2", "null", "string")


def test_alpha_outside_the_documented_range_warns_once(tiny_dir, capsys):
    code, _, err = generate_json(capsys, tiny_dir, "--prompt", "x = 1", "--rule", "chow", "--alpha", "7.5",
                                 "--max-new-tokens", "2")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "--alpha 7.5" in warnings[0] and "[0, 1]" in warnings[0] and "chow" in warnings[0]
    code, _, err = generate_json(capsys, tiny_dir, "--prompt", "x = 1", "--rule", "chow", "--alpha", "0.99",
                                 "--max-new-tokens", "2")
    assert code == 0 and "warning" not in err


def test_log_with_the_learned_generator_is_a_clear_error(tiny_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("def f(x):\n    return x\n")
    args = log_args(tiny_dir, corpus, tmp_path / "log")
    assert deferral([*args, "--mode", "on-policy", "--generator", "learned"]) == 2
    line = one_error_line(capsys, "--generator learned", "speculative")
    assert "--router DIR" not in line  # `deferral log` has no --router flag


def test_limits_below_one_are_refused(tiny_dir, task_file, tmp_path, capsys):
    from deferral.errors import DeferralError
    from inference.tasks import make_task

    for spec, limit in [("stdlib", 0), ("stdlib", -3), (f"hf:{task_file}", -1)]:
        with pytest.raises(DeferralError, match=f"--limit must be at least 1 example, got {limit}"):
            make_task(spec, limit=limit)
    assert make_task("stdlib").limit == 50
    assert evaluate(tiny_dir, task_file, tmp_path / "eval", "unused", "--limit", "-2", "--rules", "[chow]") == 2
    one_error_line(capsys, "--limit must be at least 1")


@pytest.mark.parametrize("flags, fragment", [
    (("--data.val_fraction", "1.5"), "data.val_fraction must lie in (0, 1)"),
    (("--data.test_fraction", "0"), "data.test_fraction must lie in (0, 1)"),
    (("--data.val_fraction", "0.5", "--data.test_fraction", "0.5"), "leaves no training documents"),
])
def test_held_out_fractions_outside_0_1_are_refused(trained_root, tmp_path, capsys, flags, fragment):
    assert fit(trained_root / "log", tmp_path / "run", *flags) == 2
    one_error_line(capsys, fragment)


def test_baselines_refuse_a_router_of_another_pair_and_bad_fractions(tiny_pair, tmp_path, capsys):
    log = write_synthetic_log(tmp_path / "log", docs=6, per_doc=50)
    router = export_random_router(tmp_path / "router", tiny_pair.identity())
    assert deferral(["baselines", "--data", str(log), "--router", str(router)]) == 2
    one_error_line(capsys, "another pair", str(log))
    assert deferral(["baselines", "--data", str(log), "--val-fraction", "0"]) == 2
    one_error_line(capsys, "--val-fraction must lie in (0, 1)")


def test_undefined_auroc_is_nan_with_a_warning(capsys):
    from training.router.module import RouterModule

    module = RouterModule(num_features=3, target="gap01", objective="classify")
    n = 16
    x = torch.randn(n, 3)
    zeros = torch.zeros(n)
    batch = (x, zeros, zeros, torch.rand(n), zeros, zeros, torch.ones(n))  # no position needs deferral
    for _ in range(2):  # two validation epochs: one warning
        module._eval_step("val", batch)
        module._eval_epoch_end("val")
    assert module.last_val_metrics["auroc"] != module.last_val_metrics["auroc"]  # nan, not 0.0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "AUROC is undefined" in warnings[0] and "gap01" in warnings[0]


def test_training_on_an_unfinished_log_warns(tmp_path, capsys):
    from training.router.datamodule import FeatureDataModule

    log = write_synthetic_log(tmp_path / "log", docs=6, per_doc=20)  # shards, but no progress.json
    FeatureDataModule(path=str(log), target="gap01").setup()
    err = capsys.readouterr().err
    assert "unfinished log" in err and "rerun the same `deferral log` command" in err
    (log / "progress.json").write_text("{}")  # what a finished run writes last
    FeatureDataModule(path=str(log), target="gap01").setup()
    assert "unfinished log" not in capsys.readouterr().err
