"""Mistakes a user can make end in one `error: <problem>: <fix>` line and exit code 2, never a traceback.

One table: each case sets up a bad input under tmp_path and gives the argv of `deferral`, run in-process
through `deferral.cli.main`, and a regex the single error line must match. Every file that existed before
the command must still be there, unchanged. A new command (or a new way to get an input wrong) adds its
cases to CASES.

Read-only folders: these tests run as root (here and in CI), and root ignores chmod. So a place that
cannot be written is made as a path *under a regular file* (tmp/afile/out), which fails for every
user. The chmod cases (READ_ONLY) run only where chmod really stops this process from writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from deferral.cli import main
from tests.router_helpers import CONFIG, write_corpus, write_synthetic_log
from tests.single_thread import one_thread  # noqa: F401  (autouse)


@dataclass
class Env:
    """What a case's setup can use: the tiny pair, a valid router export and a small log (shared, read-only)."""

    tmp: Path
    drafter: str
    target: str
    router_template: Path
    log: Path

    @property
    def pair(self) -> list[str]:
        return ["--drafter", self.drafter, "--target", self.target]

    def afile(self) -> Path:
        """A regular file: a path below it cannot be created, by root either."""
        path = self.tmp / "afile"
        path.write_text("keep me\n")
        return path

    def readonly(self) -> Path:
        path = self.tmp / "readonly"
        path.mkdir(exist_ok=True)
        path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        return path

    def corpus(self) -> str:
        return str(write_corpus(self.tmp / "corpus.txt", docs=6, words=10))

    def hf_rows(self, text: str | None = None) -> str:
        path = self.tmp / "rows.jsonl"
        path.write_text('{"prompt": "def f(x):", "reference": "    return x"}\n' if text is None else text)
        return f"hf:{path}"

    def router(self, meta=None, weights=None) -> str:
        """A copy of the valid export, its router.json rewritten by `meta(dict)` or its weights by `weights(bytes)`."""
        import json

        folder = self.tmp / "router"
        shutil.copytree(self.router_template, folder)
        if meta is not None:
            path = folder / "router.json"
            path.write_text(json.dumps(meta(json.loads(path.read_text()))))
        if weights is not None:
            path = folder / "router.safetensors"
            path.write_bytes(weights(path.read_bytes()))
        return str(folder)

    def model(self, weights: Callable[[bytes], bytes]) -> str:
        folder = self.tmp / "drafter"
        shutil.copytree(self.drafter, folder)
        path = folder / "model.safetensors"
        path.write_bytes(weights(path.read_bytes()))
        return str(folder)


def log(env: Env, *flags: str, out: Path | None = None) -> list[str]:
    out = env.tmp / "log" if out is None else out
    return ["log", *env.pair, "--data", env.corpus(), "--out", str(out), "--no-progress", *flags]


def train(env: Env, *flags: str) -> list[str]:
    return ["train", "fit", "--config", CONFIG, "--data.path", str(env.log), "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", *flags]


def no_mlflow(env: Env) -> list[str]:
    return ["--trainer.default_root_dir", str(env.tmp / "run"), "--mlflow.tracking_uri", "none"]


def evaluate(env: Env, *flags: str, task: str | None = None) -> list[str]:
    return ["evaluate", *env.pair, "--task", task or env.hf_rows(), "--rules", "[]", "--modes", "[speculative]",
            "--max-new-tokens", "2", "--no-fidelity", *flags]


def generate_learned(env: Env, router: str) -> list[str]:
    return ["generate", *env.pair, "--rule", "learned", "--router", router, "--prompt", "def", "--max-new-tokens", "2"]


def put(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def write_run_json(folder: Path, text: str) -> Path:
    folder.mkdir()
    (folder / "run.json").write_text(text)
    return folder


def parquet_of_numbers(env: Env) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = env.tmp / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    return str(path)


def drop(key: str):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def config_value(key: str, value):
    return lambda meta: {**meta, "config": {**meta["config"], key: value}}


def log_pair(env: Env) -> dict:
    """The pair the shared log records, so that a router made for it passes the pair check."""
    import json

    return json.loads((env.log / "meta.json").read_text())["pair"]


def sqlite_under(path: Path) -> str:
    return f"sqlite:///{path / 'mlflow.db'}"


UNDER_A_FILE = r"cannot be written \(.*afile is a file, not a folder\): choose a writable"
IS_A_FILE = r"is an existing file, not a folder: choose a folder path"
STORE = r"MLflow store sqlite:///.* cannot be written \(.*\): pass "

# (name, setup(env) -> argv, regex of the error line)
CASES: list[tuple[str, Callable[[Env], list[str]], str]] = [
    # --- where a command writes
    ("log --out is a file", lambda e: log(e, "--no-tracking", out=e.afile()), r"--out .*afile " + IS_A_FILE),
    ("log --out under a file", lambda e: log(e, "--no-tracking", out=e.afile() / "out"), UNDER_A_FILE),
    ("train root is a file", lambda e: train(e, "--trainer.default_root_dir", str(e.afile()), "--mlflow.tracking_uri", "none"),
     r"--trainer.default_root_dir .*afile " + IS_A_FILE),
    ("train root under a file", lambda e: train(e, "--trainer.default_root_dir", str(e.afile() / "run"),
                                                 "--mlflow.tracking_uri", "none"), UNDER_A_FILE),
    ("export --out is a file", lambda e: ["export", "--checkpoint", str(e.log / "meta.json"), "--out", str(e.afile())],
     IS_A_FILE),
    ("export --out under a file", lambda e: ["export", "--checkpoint", str(e.log / "meta.json"),
                                             "--out", str(e.afile() / "router")], UNDER_A_FILE),
    ("baselines --out is a folder", lambda e: ["baselines", "--data", str(e.log), "--out", str(e.tmp)],
     r"--out .* is a folder, not a file: give a file path"),
    ("baselines --out under a file", lambda e: ["baselines", "--data", str(e.log), "--out", str(e.afile() / "t.md")],
     UNDER_A_FILE),
    ("evaluate --out is a file", lambda e: evaluate(e, "--no-mlflow", "--out", str(e.afile())), IS_A_FILE),
    ("evaluate --out under a file", lambda e: evaluate(e, "--no-mlflow", "--out", str(e.afile() / "eval")), UNDER_A_FILE),
    ("demo --workdir is a file", lambda e: ["demo", *e.pair, "--workdir", str(e.afile())], r"--workdir .*" + IS_A_FILE),
    ("demo --workdir under a file", lambda e: ["demo", *e.pair, "--workdir", str(e.afile() / "demo")], UNDER_A_FILE),
    # --- MLflow stores that cannot be written: refused before MLflow opens them (it retries for minutes)
    ("log MLflow store under a file", lambda e: log(e, "--tracking-uri", sqlite_under(e.afile())),
     STORE + r"--tracking-uri .* or --tracking-uri none"),
    ("train MLflow store under a file", lambda e: train(e, "--trainer.default_root_dir", str(e.tmp / "run"),
                                                         "--mlflow.tracking_uri", sqlite_under(e.afile())),
     STORE + r"--mlflow.tracking_uri .* or --mlflow.tracking_uri none"),
    ("evaluate MLflow store under a file", lambda e: evaluate(e, "--out", str(e.tmp / "eval"),
                                                               "--tracking-uri", sqlite_under(e.afile())),
     STORE + r"--tracking-uri .* or --tracking-uri none"),
    ("demo MLflow store under a file", lambda e: ["demo", *e.pair, "--workdir", str(e.tmp / "demo"),
                                                   "--tracking-uri", sqlite_under(e.afile())], STORE),
    # --- damaged weights
    ("router weights truncated", lambda e: generate_learned(e, e.router(weights=lambda b: b[: len(b) // 2])),
     r"router.safetensors is truncated or not a safetensors file .*: re-export"),
    ("router weights garbage", lambda e: generate_learned(e, e.router(weights=lambda b: b"\x00garbage" * 40)),
     r"router.safetensors is truncated or not a safetensors file"),
    ("model weights truncated", lambda e: ["generate", "--drafter", e.model(lambda b: b[: len(b) // 2]),
                                           "--target", e.target, "--prompt", "x"],
     r"could not load drafter .*re-download or re-save the model files"),
    ("model weights garbage", lambda e: ["generate", "--drafter", e.model(lambda b: b"garbage" * 100),
                                         "--target", e.target, "--prompt", "x"], r"could not load drafter"),
    # --- router.json
    ("router.json is a list", lambda e: generate_learned(e, e.router(meta=lambda m: [m])),
     r"router.json holds a JSON list, not an object: re-export"),
    ("router.json without config", lambda e: generate_learned(e, e.router(meta=drop("config"))),
     r"router.json is malformed \(no 'config' object.*\): re-export"),
    ("router.json without feature_spec", lambda e: generate_learned(e, e.router(meta=drop("feature_spec"))),
     r"feature description is missing or malformed"),
    ("router.json without feature_spec (baselines)",
     lambda e: ["baselines", "--data", str(e.log), "--router", e.router(meta=lambda m: {**drop("feature_spec")(m),
                                                                                         "pair": log_pair(e)})],
     r"lists no feature names in router.json: re-export"),
    ("router.json text for hidden", lambda e: generate_learned(e, e.router(meta=config_value("hidden", "eight"))),
     r"config.hidden is 'eight', not a number"),
    ("router.json text for num_features",
     lambda e: evaluate(e, "--no-mlflow", "--out", str(e.tmp / "eval"), "--rules", "[learned]", "--deferral-rates",
                        "[0.3]", "--router", e.router(meta=config_value("num_features", "12"))),
     r"config.num_features is '12', not a number"),
    ("router.json text for the threshold",
     lambda e: generate_learned(e, e.router(meta=lambda m: {**m, "default_threshold": "high"})),
     r"default_threshold is 'high', not a number"),
    ("router.json text in the calibration table", lambda e: generate_learned(e, e.router(
        meta=lambda m: {**m, "calibration": {"alpha": 0.0, "rows": [{"deferral_rate": "0.3", "threshold": 0.5}]}})),
     r"calibration rows need numeric deferral_rate and threshold"),
    # --- input files
    ("generate binary --prompts", lambda e: ["generate", *e.pair, "--prompts", put(e.tmp / "p.jsonl", bytes(range(256)))],
     r"prompts file .* is not UTF-8 text .*: pass a JSONL file"),
    ("generate malformed --prompts", lambda e: ["generate", *e.pair, "--prompts", put(e.tmp / "p.jsonl", b'{"prompt": \n')],
     r"p.jsonl:1 is not a JSON object with a 'prompt' field: fix that line"),
    ("evaluate malformed hf jsonl", lambda e: evaluate(e, "--no-mlflow", "--out", str(e.tmp / "eval"),
                                                        task=e.hf_rows('{"prompt": "a", "reference": "b"}\n{oops\n')),
     r"could not read dataset file .*rows.jsonl \(.*\): fix the file"),
    ("evaluate empty hf jsonl", lambda e: evaluate(e, "--no-mlflow", "--out", str(e.tmp / "eval"), task=e.hf_rows("")),
     r"dataset file .*rows.jsonl is empty: add rows"),
    ("log corrupt run.json", lambda e: log(e, "--no-tracking", out=write_run_json(e.tmp / "log", '{"corpus": ')),
     r"run.json is corrupt \(not valid JSON.*\): choose a new --out"),
    ("evaluate corrupt run.json", lambda e: evaluate(e, "--no-mlflow", "--out", str(write_run_json(e.tmp / "eval", "[1, 2]"))),
     r"run.json is corrupt \(a JSON list, not an object\): choose a new --out"),
    ("log parquet of numbers", lambda e: ["log", *e.pair, "--data", parquet_of_numbers(e), "--out", str(e.tmp / "log"),
                                          "--no-tracking", "--no-progress"],
     r"numbers.parquet column 'text' holds int64, not text: pass --text-column"),
    # --- settings
    ("log --devices 4 --accelerator gpu without GPUs",
     lambda e: log(e, "--no-tracking", "--devices", "4", "--accelerator", "gpu"),
     r"--accelerator gpu --devices 4 is not available here .*: pass an accelerator"),
    ("train batch size 0", lambda e: train(e, "--data.batch_size", "0", *no_mlflow(e)), r"--data.batch_size 0.*at least 1"),
    ("train max_epochs 0", lambda e: train(e, "--trainer.max_epochs", "0", *no_mlflow(e)),
     r"--trainer.max_epochs 0: train at least 1 epoch"),
]

# Cases that need a folder this process cannot write (skipped where chmod does not stop it, e.g. as root).
READ_ONLY: list[tuple[str, Callable[[Env], list[str]], str]] = [
    ("log --out in a read-only folder", lambda e: log(e, "--no-tracking", out=e.readonly() / "log"),
     r"cannot be written \(.*readonly is read-only\)"),
    ("log MLflow store in a read-only working directory",
     lambda e: (os.chdir(e.readonly()), log(e, "--tracking-uri", "sqlite:///mlflow.db", out=e.tmp / "log"))[1],
     STORE + r"--tracking-uri .* or --tracking-uri none"),
]


@pytest.fixture(scope="module")
def shared(tiny_dir, tiny_pair, tmp_path_factory) -> dict:
    """A valid router export for the tiny pair and a small synthetic log, made once."""
    from deferral.features import FeatureSpec
    from deferral.router import Router, RouterConfig, save_router

    # Lightning attaches a stderr handler when first imported: import it here, outside any one test's
    # capsys stream (a handler bound to a closed capsys stream prints "--- Logging error ---" tracebacks)
    import lightning.pytorch  # noqa: F401

    base = tmp_path_factory.mktemp("user_errors")
    spec = FeatureSpec()
    router = save_router(base / "router", Router(RouterConfig(num_features=spec.dim, hidden=8, layers=1)),
                         {"feature_spec": spec.to_dict(), "pair": tiny_pair.identity(), "objective": "classify",
                          "default_threshold": 0.5})
    return {"router": router, "log": write_synthetic_log(base / "log", docs=6, per_doc=20)}


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_case(setup, pattern, tmp_path, tiny_dir, shared, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative default (runs/..., mlflow.db) lands in tmp_path
    env = Env(tmp_path, str(tiny_dir / "drafter"), str(tiny_dir / "target"), shared["router"], shared["log"])
    argv = setup(env)
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert re.search(pattern, errors[0]), errors[0]
    after = snapshot(tmp_path)
    assert {p: b for p, b in after.items() if p in before} == before, "a file that existed was removed or changed"


@pytest.mark.parametrize("name, setup, pattern", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line(name, setup, pattern, tmp_path, tiny_dir, shared, capsys, monkeypatch):
    if "without GPUs" in name:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has GPUs")
    run_case(setup, pattern, tmp_path, tiny_dir, shared, capsys, monkeypatch)


@pytest.mark.parametrize("name, setup, pattern", READ_ONLY, ids=[c[0] for c in READ_ONLY])
def test_read_only_folder_is_one_line(name, setup, pattern, tmp_path, tiny_dir, shared, capsys, monkeypatch):
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    if os.access(probe, os.W_OK):
        pytest.skip("chmod does not stop this process from writing (root): see the module docstring")
    monkeypatch.chdir(tmp_path)  # restored after the case, which may chdir into the read-only folder
    try:
        run_case(setup, pattern, tmp_path, tiny_dir, shared, capsys, monkeypatch)
    finally:
        for folder in (probe, tmp_path / "readonly"):
            if folder.exists():
                folder.chmod(0o755)


def test_the_shared_router_export_is_valid(shared, tiny_dir, tmp_path, capsys):
    """The router cases fail because of their damage, not because the template is broken: an undamaged
    copy decodes through the same command the damaged ones are refused by."""
    env = Env(tmp_path, str(tiny_dir / "drafter"), str(tiny_dir / "target"), shared["router"], shared["log"])
    capsys.readouterr()
    code = main([*generate_learned(env, env.router()), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "error:" not in err, err
    assert json.loads(out.strip().splitlines()[-1])["new_tokens"] == 2
