"""benchmarks/bench_compare.py on a tiny pair: batched groups, which methods run at which batch size,
greedy equality where it is promised, and refused settings."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.single_thread import one_thread  # noqa: F401  (autouse)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PROMPTS = ["def add(a, b):", "x = [", "The quick brown fox", "import os\n", "class A:"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its neighbour bench_speculative
    spec = importlib.util.spec_from_file_location("bench_compare", BENCHMARKS / "bench_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def task_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "reference": " pass"}) + "\n" for p in PROMPTS))
    return path


def compare(bench, tiny_dir, task_file, tmp_path, *extra):
    out = tmp_path / "rows.json"
    rc = bench.main(["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                     "--task", f"hf:{task_file}", "--limit", "5", "--max-new-tokens", "6", "--repeats", "2",
                     "--rule", "chow", "--alpha", "0.5", "--json", str(out), *extra])
    assert rc == 0
    return {row["method"]: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize("mode", [[], ["--lockstep"]], ids=["stream", "lockstep"])
def test_batched_groups_decode_every_prompt_and_keep_lossless_equality(bench, tiny_dir, task_file, tmp_path, mode):
    # stream: one loop of 2 rows over the 5 prompts; lockstep: groups of 2, 2 and 1
    rows = compare(bench, tiny_dir, task_file, tmp_path, "--batch-size", "2", *mode)
    # transformers' generate and assisted generation decode one prompt at a time: left out when batched
    assert set(rows) == {"target only", "drafter only", "speculative (ours)", "chow α=0.5 (best hand-set)"}
    assert rows["speculative (ours)"]["greedy_equal_to_target"] == "5/5"
    assert rows["target only"]["tokens"] == rows["speculative (ours)"]["tokens"] > 0
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and len(row["seconds"]) == 2


def test_batch_size_one_adds_transformers_generate_and_assisted(bench, tiny_dir, task_file, tmp_path):
    rows = compare(bench, tiny_dir, task_file, tmp_path)
    for name in ("target (transformers generate)", "assisted (transformers)", "speculative (ours)"):
        assert rows[name]["greedy_equal_to_target"] == "5/5", name


def test_bad_bonus_source_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--bonus", "rule,drafter"])
    assert "--bonus takes rule or target" in capsys.readouterr().err


def test_bad_batch_size_is_refused(bench, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--batch-size", "0"])
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_bonus_sources_give_each_lossy_rule_a_row(bench, tiny_dir, task_file, tmp_path):
    rows = compare(bench, tiny_dir, task_file, tmp_path, "--no-transformers", "--bonus", "rule,target",
                   "--rule", "chow", "--alpha", "1.0")  # keeps every draft: every block ends in a bonus token
    assert set(rows) == {"target only", "drafter only", "speculative (ours)", "chow α=1 (best hand-set)",
                         "chow α=1 (best hand-set) [bonus target]"}
    # both keep every draft and add a bonus token: the same tokens per target call (the tokens
    # themselves are tested in tests/test_engine.py)
    per_call = [rows[f"chow α=1 (best hand-set){s}"]["tokens_per_target_call"] for s in ("", " [bonus target]")]
    assert per_call[0] == per_call[1] > 1


def test_engines_and_drafting_settings_add_rows(bench, tiny_dir, task_file, tmp_path):
    rows = compare(bench, tiny_dir, task_file, tmp_path, "--engine", "hf,static", "--no-transformers",
                   "--drafting", "k=2", "k=5,schedule=heuristic", "k=6,confidence=0.3")
    drafting = ["speculative (k=2)", "speculative (k=5,schedule=heuristic)", "speculative (k=6,confidence=0.3)"]
    for name in ["speculative (ours)", *drafting]:
        assert rows[name]["equality_promised"] and rows[name]["greedy_equal_to_target"] == "5/5", name
        assert rows[f"{name} [static]"]["greedy_equal_to_target"] == "5/5", name
    assert "target (transformers generate)" not in rows and "target only [static]" in rows


def test_bad_drafting_setting_is_one_error_line(bench, tiny_dir, task_file, capsys):
    rc = bench.main(["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                     "--task", f"hf:{task_file}", "--limit", "2", "--drafting", "k=3,depth=2"])
    assert rc == 2 and "'depth=2' is not KEY=VALUE" in capsys.readouterr().err


def test_count_steps_compares_batches_with_refilled_rows(monkeypatch, tiny_dir, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import count_steps

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "reference": " pass"}) + "\n" for p in PROMPTS))
    count_steps.main(["--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
                      "--task", f"hf:{rows}", "--limit", "5", "--batch-size", "2", "--max-new-tokens", "8"])
    out = capsys.readouterr().out
    batched, refilled = (int(x) for x in re.findall(r": +(\d+) steps", out))
    assert 0 < refilled <= batched
