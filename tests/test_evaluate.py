"""`deferral evaluate` on the tiny pair with a three-prompt local task: files, resume (of the sweep and
of the timing stage), errors, MLflow."""

import json

import pytest

from deferral.cli import main as cli
from deferral.errors import DeferralError
from inference.config import Generation, RequestStats
from inference.evaluate import BASELINE, SweepPoint, alpha_grid, plan_sweep, single_run_fields, summarize

PROMPTS = [("def add(a, b):\n", "    return a + b"), ("import os\n", "import sys"), ("x = 1\n", "y = 2")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models spend their time in thread hand-offs on a busy machine: one thread is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "reference": r}) + "\n" for p, r in PROMPTS))
    return path


def evaluate_args(tiny_dir, task_file, out, *extra):
    return [
        "evaluate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
        "--task", f"hf:{task_file}", "--rules", "[chow]", "--alphas", "{chow: [0.5]}",
        "--modes", "[speculative, sequential]", "--max-new-tokens", "8", "--out", str(out),
        "--threads", "1", "--timing-repeats", "2", "--timing-prompts", "2", *extra,
    ]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tiny_dir, task_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert cli(evaluate_args(tiny_dir, task_file, out, "--no-mlflow")) == 0
    return out


def test_writes_every_file_with_one_row_per_point(finished):
    for name in ("results.jsonl", "generations.jsonl", "timings.jsonl", "tables.md", "quality_vs_latency.png",
                 "quality_vs_deferral.png", "run.json"):
        assert (finished / name).is_file() and (finished / name).stat().st_size > 0, name
    rows = read_jsonl(finished / "results.jsonl")
    assert [r["key"] for r in rows] == [
        "target|baseline|-|K=0", "drafter|baseline|-|K=0", "speculative|speculative|-|K=5",
        "chow|speculative|alpha=0.5|K=5", "chow|sequential|alpha=0.5|K=0",
    ]
    target = rows[0]
    assert target["relative_latency"] == 1.0 and target["deferral_rate"] == 1.0
    for row in rows:
        assert row["prompts"] == 3 and row["quality_key"] == "chrf"
        assert {"exact_line", "chrf", "rouge_l", "target_nll", "rouge_l_vs_target"} <= set(row["metrics"])
        assert row["relative_latency"] > 0
        assert row["timing_repeats"] == 2 and row["timing_prompts"] == 2 and len(row["timing_s"]) == 2
        assert row["relative_latency_low"] <= row["relative_latency"] <= row["relative_latency_high"]
    assert rows[1]["target_calls"] == 0 and rows[1]["deferral_rate"] == 0.0
    tables = (finished / "tables.md").read_text()
    assert "## chow (speculative)" in tables and "## chow (sequential)" in tables and "speed-up at target quality" in tables


def test_rows_carry_each_prompts_quality_and_the_report_pairs_it_with_the_target(finished):
    from inference.tasks.text_metrics import reference_metrics

    rows = {r["key"]: r for r in read_jsonl(finished / "results.jsonl")}
    replies = {}
    for g in read_jsonl(finished / "generations.jsonl"):
        replies.setdefault(g["key"], {})[g["index"]] = g["text"]
    for key, row in rows.items():
        # each prompt's score, recomputed from the stored reply, in prompt order; the mean is the row's quality
        expected = [reference_metrics(replies[key][i], ref)["chrf"] for i, (_, ref) in enumerate(PROMPTS)]
        assert row["quality_per_example"] == pytest.approx(expected, abs=1e-6)
        assert sum(row["quality_per_example"]) / 3 == pytest.approx(row["quality"], abs=1e-6)
    tables = (finished / "tables.md").read_text()
    drafter = rows["drafter|baseline|-|K=0"]
    diff = drafter["quality"] - rows["target|baseline|-|K=0"]["quality"]
    [line] = [ln for ln in tables.splitlines() if ln.startswith("| drafter |")]
    assert f"{diff:+.4f} [" in line
    [line] = [ln for ln in tables.splitlines() if ln.startswith("| speculative |")]
    assert "+0.0000 [+0.0000, +0.0000]" in line  # lossless: the target's text on every prompt
    assert "paired bootstrap 95% interval" in tables


def test_greedy_lossless_speculative_reproduces_the_target(finished):
    gens = read_jsonl(finished / "generations.jsonl")
    by_key = {}
    for g in gens:
        by_key.setdefault(g["key"], {})[g["index"]] = g["tokens"]
    assert by_key["speculative|speculative|-|K=5"] == by_key["target|baseline|-|K=0"]
    rows = {r["key"]: r for r in read_jsonl(finished / "results.jsonl")}
    assert rows["target|baseline|-|K=0"]["metrics"]["rouge_l_vs_target"] == 1.0
    assert rows["speculative|speculative|-|K=5"]["quality"] == rows["target|baseline|-|K=0"]["quality"]


def test_rerun_skips_finished_rows_and_redoes_a_cut_one(finished, tiny_dir, task_file):
    results = finished / "results.jsonl"
    before = results.read_text().splitlines()
    assert cli(evaluate_args(tiny_dir, task_file, finished, "--no-mlflow")) == 0
    assert results.read_text().splitlines() == before  # nothing decoded again
    results.write_text("\n".join(before[:-1]) + "\n" + before[-1][:20])  # an interrupted last write
    assert cli(evaluate_args(tiny_dir, task_file, finished, "--no-mlflow")) == 0
    after = read_jsonl(results)
    assert [r["key"] for r in after] == [json.loads(line)["key"] for line in before]


LATENCY_FIELDS = set(single_run_fields(1.0, 1.0))  # what the timing stage writes into a row


def test_an_interrupted_timing_stage_resumes_and_keeps_its_finished_repeats(tiny_dir, task_file, tmp_path, monkeypatch):
    import inference.timing

    out, add = tmp_path / "run", inference.timing.TimingStore.add

    def add_then_stop(self, seconds):
        add(self, seconds)
        raise KeyboardInterrupt  # killed right after the first repeat is recorded

    monkeypatch.setattr(inference.timing.TimingStore, "add", add_then_stop)
    assert cli(evaluate_args(tiny_dir, task_file, out, "--no-mlflow")) == 130
    [first] = read_jsonl(out / "timings.jsonl")
    swept = read_jsonl(out / "results.jsonl")
    assert all(r["timing_repeats"] == 0 for r in swept)  # the sweep's single pass until timing completes
    monkeypatch.setattr(inference.timing.TimingStore, "add", add)
    decoded, decode = [], inference.timing.decode_point
    monkeypatch.setattr(inference.timing, "decode_point", lambda *a: decoded.append(a[2].key) or decode(*a))
    assert cli(evaluate_args(tiny_dir, task_file, out, "--no-mlflow")) == 0
    timings = read_jsonl(out / "timings.jsonl")
    assert len(timings) == 2 and timings[0] == first
    assert sorted(decoded) == sorted(r["key"] for r in swept for _ in range(2))  # one repeat: 2 prompts, batch 1
    rows = read_jsonl(out / "results.jsonl")
    assert [r["key"] for r in rows] == [r["key"] for r in swept]
    for before, after in zip(swept, rows):
        assert {k: v for k, v in before.items() if k not in LATENCY_FIELDS} == \
            {k: v for k, v in after.items() if k not in LATENCY_FIELDS}
        assert after["timing_repeats"] == 2 and after["timing_s"][0] == first["seconds"][after["key"]]


def test_no_timing_repeats_takes_latencies_from_the_sweep_pass(tiny_dir, task_file, tmp_path):
    out = tmp_path / "run"
    assert cli(evaluate_args(tiny_dir, task_file, out, "--no-mlflow", "--modes", "[speculative]",
                             "--timing-repeats", "0")) == 0
    assert not (out / "timings.jsonl").exists()
    rows = read_jsonl(out / "results.jsonl")
    for row in rows:
        assert row["timing_repeats"] == 0 and row["relative_latency_low"] is None
        assert row["relative_latency"] == pytest.approx(row["wall_s"] / rows[0]["wall_s"])
    assert "(1 run)" in (out / "tables.md").read_text()


def test_another_setup_in_the_same_folder_is_refused(finished, tiny_dir, task_file, capsys):
    args = evaluate_args(tiny_dir, task_file, finished, "--no-mlflow")
    args[args.index("--max-new-tokens") + 1] = "9"
    assert cli(args) == 2
    assert "holds results of another setup (different decode)" in capsys.readouterr().err


def test_logs_a_named_run_to_mlflow(tiny_dir, task_file, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = evaluate_args(tiny_dir, task_file, tmp_path / "run", "--tracking-uri", uri, "--modes", "[speculative]")
    assert cli(args) == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["deferral-evaluate"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name.startswith("evaluate hf | drafter -> target | chow")
    assert "chow/speculative/area_under_frontier" in run.data.metrics
    assert "target/quality" in run.data.metrics
    assert json.loads((tmp_path / "run" / "run.json").read_text())["mlflow_run_id"] == run.info.run_id


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rules", "[learned]"], "needs --router"),
        (["--rules", "[nope]"], "unknown rule 'nope'"),
        (["--modes", "[parallel]"], "unknown mode"),
        (["--task", "mbpp"], "unknown task"),
        (["--alphas", "{chwo: [0.1]}"], "unknown rule(s) ['chwo']"),
    ],
)
def test_bad_input_exits_with_one_clear_line(tiny_dir, task_file, tmp_path, capsys, args, message):
    assert cli(evaluate_args(tiny_dir, task_file, tmp_path / "run", "--no-mlflow", *args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_plan_sweep_puts_references_first_and_crosses_knobs_with_k():
    points = plan_sweep(["chow", "token-v3"], ["speculative", "sequential"], [3, 5],
                        {"chow": [0.1, 0.2], "token-v3": [0.5]})
    assert points[0] == SweepPoint("target", BASELINE) and points[1] == SweepPoint("drafter", BASELINE)
    assert [p.draft_tokens for p in points[2:4]] == [3, 5] and points[2].rule == "speculative"
    chow = [p for p in points if p.rule == "chow"]
    assert len(chow) == 2 * 2 + 2  # speculative: 2 K x 2 α; sequential: 2 α
    assert len({p.key for p in points}) == len(points)
    assert plan_sweep(["learned"], ["speculative"], [5], {}, ("deferral_rate", [0.2]))[-1].key == \
        "learned|speculative|deferral_rate=0.2|K=5"


def test_alpha_grid_spans_the_rule_range():
    assert alpha_grid("diff", 5) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    with pytest.raises(DeferralError):
        alpha_grid("learned", 3)


def test_summarize_counts_by_hand():
    stats = [RequestStats(new_tokens=10, target_calls=4, drafter_calls=12, drafted=10, accepted=6, deferred=3, examined=8),
             RequestStats(new_tokens=6, target_calls=4, drafter_calls=8, drafted=10, accepted=2, deferred=1, examined=8)]
    gens = [Generation(tokens=[1] * s.new_tokens, stats=s) for s in stats]
    row = summarize(SweepPoint("chow", "speculative", "alpha", 0.3, 5), gens, 2.0, 4.0, {"chrf": 0.4}, "chrf")
    assert row["relative_latency"] == 0.5 and row["quality"] == 0.4
    assert row["tokens_per_target_call"] == 2.0 and row["target_calls_per_token"] == 0.5
    assert row["deferral_rate"] == 0.25 and row["acceptance_rate"] == 0.4


def test_demo_refuses_a_missing_router_config_in_one_line(tmp_path, capsys):
    assert cli(["demo", "--router-config", str(tmp_path / "none.yaml"), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "router config" in err[0] and "--router-config" in err[0]


def test_references_from_another_folder_are_taken_not_decoded_and_still_timed(finished, tiny_dir, task_file, tmp_path,
                                                                              monkeypatch, capsys):
    import inference.evaluate

    full_decodes, decode = [], inference.evaluate.decode_point

    def counting(pair, rule, point, prompts, *rest, **options):
        if len(prompts) == len(PROMPTS):  # the sweep decodes every prompt at once (batch size 1, one call)
            full_decodes.append(point.key)
        return decode(pair, rule, point, prompts, *rest, **options)

    monkeypatch.setattr(inference.evaluate, "decode_point", counting)
    out = tmp_path / "run"
    assert cli(evaluate_args(tiny_dir, task_file, out, "--no-mlflow", "--references-from", str(finished))) == 0
    references = ["target|baseline|-|K=0", "drafter|baseline|-|K=0", "speculative|speculative|-|K=5"]
    assert not set(full_decodes) & set(references) and full_decodes
    mine, theirs = ({r["key"]: r for r in read_jsonl(folder / "results.jsonl")} for folder in (out, finished))
    for key in references:
        assert mine[key]["quality"] == theirs[key]["quality"] and mine[key]["new_tokens"] == theirs[key]["new_tokens"]
        assert mine[key]["timing_repeats"] == 2  # timed in this run, with its other points
    texts = lambda folder: {(g["key"], g["index"]): g["tokens"] for g in read_jsonl(folder / "generations.jsonl")}  # noqa: E731
    assert {k: v for k, v in texts(out).items() if k[0] in references} == \
        {k: v for k, v in texts(finished).items() if k[0] in references}
    other = evaluate_args(tiny_dir, task_file, tmp_path / "other", "--no-mlflow", "--references-from", str(finished))
    other[other.index("--max-new-tokens") + 1] = "9"
    capsys.readouterr()
    assert cli(other) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--references-from" in err[0] and "another setup (different decode)" in err[0]


def test_fidelity_scores_each_reply_to_a_prompt_once(tiny_pair, monkeypatch):
    import inference.evaluate

    scored, score = [], inference.evaluate.target_nll_per_token
    monkeypatch.setattr(inference.evaluate, "target_nll_per_token",
                        lambda pair, prompt, tokens: scored.append((prompt[0], *tokens)) or score(pair, prompt, tokens))
    prompts = [[5, 6, 7], [8, 9]]
    reply = lambda *tokens: Generation(tokens=list(tokens), stats=RequestStats())  # noqa: E731
    seen = {}
    first = inference.evaluate.fidelity(tiny_pair, prompts, [reply(10, 11), reply(12)], ["a", "b"], ["a", "b"], seen)
    inference.evaluate.fidelity(tiny_pair, prompts, [reply(10, 11), reply(13)], ["a", "c"], ["a", "b"], seen)
    inference.evaluate.fidelity(tiny_pair, prompts, [reply(12), reply(10, 11)], ["b", "a"], ["a", "b"], seen)
    assert scored == [(5, 10, 11), (8, 12), (8, 13), (5, 12), (8, 10, 11)]  # (prompt 0, 10 11) scored once
    fresh = inference.evaluate.fidelity(tiny_pair, prompts, [reply(10, 11), reply(12)], ["a", "b"], ["a", "b"])
    assert first == fresh


def _benchmark(name: str):
    """A script of benchmarks/ loaded as a module (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_quality_rescores_a_folder_like_the_report(finished, task_file, capsys):
    script = _benchmark("paired_quality")
    assert script.main([str(finished / "generations.jsonl"), "--task", f"hf:{task_file}"]) == 0
    out = capsys.readouterr().out
    rows = {r["key"]: r for r in read_jsonl(finished / "results.jsonl")}
    target = rows["target|baseline|-|K=0"]["quality"]
    for key, row in rows.items():
        [line] = [ln for ln in out.splitlines() if ln.startswith(key + " ")]
        assert f"{row['quality']:8.4f} {row['quality'] - target:+9.4f} [" in line
    with pytest.raises(SystemExit, match="replies for 2 examples"):
        script.main([str(finished / "generations.jsonl"), "--task", f"hf:{task_file}", "--limit", "2"])


def test_frontier_gap_interpolates_within_a_rules_range_only():
    script = _benchmark("frontier_gap")
    curve = [(3.0, 0.20), (4.0, 0.18)]
    assert script.interpolated_quality(curve, 3.5) == pytest.approx(0.19)
    assert script.interpolated_quality(curve, 3.0) == pytest.approx(0.20)
    assert script.interpolated_quality(curve, 2.9) is None and script.interpolated_quality(curve, 4.1) is None


def test_frontier_gap_band_edge_is_where_a_curve_first_leaves_the_band():
    edge = _benchmark("frontier_gap").band_edge
    curve = [(4.0, 0.18), (3.0, 0.20), (3.5, 0.195), (4.5, 0.199)]  # sorted by cost inside
    assert edge(curve, 0.19) == pytest.approx(3.5 + 0.5 / 3)  # first drop: 3.5 (0.195) to 4.0 (0.18)
    assert edge(curve, 0.17) == 4.5  # never below
    assert edge(curve, 0.21) is None  # below from the start


def test_frontier_gap_starts_every_curve_at_lossless_decoding(tmp_path, capsys):
    script = _benchmark("frontier_gap")
    rows = [("target", "", None, 1.0, 0.200), ("speculative", "", None, 3.0, 0.200),
            ("token-v3", "alpha", 0.5, 4.0, 0.190), ("learned", "threshold", 0.3, 3.5, 0.199)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps({"rule": r, "knob_name": n, "knob": k, "tokens_per_target_call": c,
                                        "quality": q}) + "\n" for r, n, k, c, q in rows))
    assert script.main([str(path)]) == 0
    out = capsys.readouterr().out
    # token-v3 at 3.5, interpolated from lossless (3.0, 0.200) to (4.0, 0.190): 0.195, so the learned point is ahead
    assert "token-v3 0.1950" in out and "ahead" in out
    # band floor 0.198: token-v3 leaves it at 3.2; learned from (3.5, 0.199) keeps it to its last point
    assert "token-v3          3.200" in out and "learned           3.500" in out


def test_frontier_gap_keeps_one_learned_curve_per_results_file(tmp_path, capsys):
    script = _benchmark("frontier_gap")

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"rule": r, "knob_name": "threshold", "knob": k, "tokens_per_target_call": c,
                                            "quality": q, "quality_key": "chrf"}) + "\n" for r, k, c, q in rows))
        return str(path)

    base = write("base.jsonl", [("target", None, 1.0, 0.200), ("speculative", None, 3.0, 0.200),
                                ("token-v3", 0.5, 4.0, 0.190)])
    good = write("good.jsonl", [("learned", 0.3, 4.0, 0.199)])
    poor = write("poor.jsonl", [("learned", 0.3, 3.5, 0.190)])
    assert script.main([base, good, poor]) == 0
    out = capsys.readouterr().out
    edges = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("learned (")}
    assert edges == {f"({good})": "4.000", f"({poor})": "3.100"}  # floor 0.198: poor leaves it at 3.0 + 0.5 * 0.2
    assert "chrf >= 0.1980" in out
