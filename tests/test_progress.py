"""Long commands show a total and an ETA from their first batch: the sweep's bar of `deferral
evaluate` counts prompts over every point, and the decode runner reports each finished batch."""

import json
import re

from deferral.cli import main as deferral


def test_evaluate_bar_counts_prompts_of_every_point_batch_by_batch(tiny_dir, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "reference": "x"}) + "\n" for p in ["a b", "c d", "e f", "g h"]))
    rc = deferral([
        "evaluate", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
        "--task", f"hf:{rows}", "--rules", "[chow]", "--alphas", "{chow: [0.5]}", "--modes", "[speculative]",
        "--max-new-tokens", "4", "--batch-size", "2", "--timing-repeats", "0", "--out", str(tmp_path / "e"),
        "--no-mlflow",
    ])
    assert rc == 0
    err = capsys.readouterr().err
    points = len((tmp_path / "e" / "results.jsonl").read_text().splitlines())  # target, drafter, speculative, chow
    total = points * 4
    counts = {int(n) for n in re.findall(rf"sweep:\s+\d+%\|[^|]*\|\s*(\d+)/{total}\b", err)}
    assert max(counts) == total


def test_run_reports_each_finished_batch(tiny_pair):
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.runner import run

    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9, 10], [11]]
    heard = []
    out = run(tiny_pair, make_rule("speculative"), prompts, DecodeConfig(max_new_tokens=3), batch_size=2,
              on_batch=heard.append)
    assert heard == [2, 2, 1] and len(out) == 5
