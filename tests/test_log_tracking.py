"""A logging run records its parameters, corpus, position counts and throughput in MLflow."""

from __future__ import annotations

from tests.test_log import log_args, write_corpus
from training.logs import logged_data as fmt
from training.logs.log_cli import main as log_main


def test_run_is_tracked(tiny_dir, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns

    corpus = write_corpus(tmp_path / "c.txt", docs=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [a for a in log_args(tiny_dir, corpus, tmp_path / "out") if a != "--no-tracking"]
    assert log_main([*args, "--tracking-uri", uri, "--experiment", "log-test"]) == 0
    ds, _ = fmt.load_logged(tmp_path / "out")
    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("log-test").experiment_id])
    assert run.data.params["data"] == str(corpus)
    assert run.data.params["max_len"] == "48"
    assert run.data.metrics["total_positions"] == ds.num_rows
    assert run.data.metrics["positions_per_s"] > 0
    assert run.data.tags["corpus.kind"] == "files"
    artifacts = [f.path for f in client.list_artifacts(run.info.run_id)]
    assert "corpus.json" in artifacts


def test_tracking_uri_none_turns_tracking_off_in_log_and_evaluate(tiny_dir, tmp_path, monkeypatch):
    """One spelling for every command: `--tracking-uri none` writes no MLflow store."""
    from deferral.cli import main as cli
    from tests.router_helpers import write_corpus

    monkeypatch.chdir(tmp_path)
    pair = ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target")]
    corpus = write_corpus(tmp_path / "corpus.txt", docs=4)
    assert cli(["log", *pair, "--data", str(corpus), "--out", "log", "--max-positions", "200", "--no-progress",
                "--tracking-uri", "none"]) == 0
    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "def f(x):", "reference": "\\n    return x"}\n')
    assert cli(["evaluate", *pair, "--task", f"hf:{task}", "--rules", "[token-v3]", "--alphas", "{token-v3: [0.5]}",
                "--modes", "[speculative]", "--max-new-tokens", "4", "--out", "eval", "--tracking-uri", "none"]) == 0
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "none").exists()


def test_tracked_runs_print_no_mlflow_info_lines(tiny_dir, tmp_path, monkeypatch, capfd):
    from deferral.cli import main as cli
    from tests.router_helpers import write_corpus

    monkeypatch.chdir(tmp_path)
    pair = ["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target")]
    store = f"sqlite:///{tmp_path / 'store.db'}"
    corpus = write_corpus(tmp_path / "corpus.txt", docs=4)
    capfd.readouterr()
    assert cli(["log", *pair, "--data", str(corpus), "--out", "log", "--max-positions", "200", "--no-progress",
                "--tracking-uri", store]) == 0
    task = tmp_path / "task.jsonl"
    task.write_text('{"prompt": "def f(x):", "reference": "\\n    return x"}\n')
    assert cli(["evaluate", *pair, "--task", f"hf:{task}", "--rules", "[token-v3]", "--alphas", "{token-v3: [0.5]}",
                "--modes", "[speculative]", "--max-new-tokens", "4", "--out", "eval", "--tracking-uri", store]) == 0
    err = capfd.readouterr().err
    assert " INFO " not in err and "Creating" not in err
    assert (tmp_path / "store.db").is_file()
