"""`deferral demo` end to end on the tiny pair (every step a real `deferral` process): its table with
the spread of every speed ratio, and the note it prints about what its quality column can resolve."""

from __future__ import annotations

import re

from deferral.cli import main as cli
from training.demo import quality_resolution


def rows(target: float, drafter: float) -> list[dict]:
    return [{"rule": "target", "quality": target}, {"rule": "drafter", "quality": drafter},
            {"rule": "token-v3", "quality": 0.5}]


def test_quality_resolution_says_when_the_column_separates_nothing():
    assert "cannot separate the rules" in quality_resolution(rows(0.0, 0.0), 5)  # pass@1 that nobody passes
    assert "cannot separate" in quality_resolution(rows(0.24, 0.23), 40)  # 0.01 < 1/40
    note = quality_resolution(rows(0.233, 0.188), 40)
    assert "0.025" in note and "0.045" in note and "cannot" not in note


def test_demo_runs_end_to_end_on_the_tiny_pair_and_skips_the_shipped_router(tiny_dir, tmp_path, capsys):
    import json

    task = tmp_path / "continuations.jsonl"  # prompts short enough for the tiny models' 256-token context
    task.write_text("".join(json.dumps({"prompt": f"def f{i}(x):", "reference": "\n    return x"}) + "\n"
                            for i in range(4)))
    rc = cli(["demo", "--task", f"hf:{task}", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / "target"),
              "--workdir", str(tmp_path / "demo"), "--log-docs", "4", "--log-positions", "40000", "--max-epochs", "1",
              "--limit", "4", "--max-new-tokens", "6", "--batch-size", "4", "--timing-repeats", "2", "--timing-prompts", "2",
              "--threads", "1", "--calibration-task", f"hf:{task}", "--calibration-prompts", "4",
              "--calibration-tokens", "6",
              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert rc == 0
    captured = capsys.readouterr()
    # The trained router's rates were calibrated while decoding before the evaluation read them.
    calibration = json.loads((tmp_path / "demo" / "router" / "router.json").read_text())["decode_calibration"]
    assert calibration["requested_rates"] == [0.2, 0.4] and calibration["prompts"] == 4
    assert "[4/7] calibrate the router's deferral rates while decoding" in captured.err
    table = [line for line in captured.out.splitlines() if line.startswith("| ")]
    rules = {line.split("|")[1].strip() for line in table[1:]}
    assert {"target", "drafter", "speculative", "token-v3", "learned"} <= rules
    assert "learned (shipped)" not in rules  # made for the default pair only
    assert "shipped router skipped" in captured.err
    header = [cell.strip() for cell in table[0].split("|")]
    latency, speedup = header.index("relative latency"), header.index("speed-up")
    for line in table[2:]:
        cells = [cell.strip() for cell in line.split("|")]
        if cells[1] != "target":  # every ratio with its spread over the timing repeats beside it
            assert re.fullmatch(r"\d+\.\d{3} \(\d+\.\d{3}–\d+\.\d{3}\)( ~)?", cells[latency]), cells[latency]
            assert re.fullmatch(r"\d+\.\d{2} \(\d+\.\d{2}–\d+\.\d{2}\)( ~)?", cells[speedup]), cells[speedup]
    assert "median over 2 repeats on 2 prompts" in captured.out and "~: the spread crosses 1.0" in captured.out
    assert "one example moves" in captured.out or "cannot separate" in captured.out
