"""`deferral demo` end to end on the tiny pair (every step a real `deferral` process): its table with
the spread of every speed ratio, and the note it prints about what its quality column can resolve."""

from __future__ import annotations

import re

from deferral.cli import main as cli
from inference.report import resolution_note


def rows(target: list[float], drafter: list[float]) -> list[dict]:
    def row(rule, scores):
        return {"rule": rule, "quality": sum(scores) / len(scores), "quality_per_example": scores}
    return [row("target", target), row("drafter", drafter)]


def test_resolution_note_says_when_nothing_differs_and_how_much_the_prompts_resolve():
    # pass@1 that nobody passes: no point differs from the target anywhere
    assert "no point scores differently" in resolution_note(*_with_target(rows([0.0] * 5, [0.0] * 5)))
    # a drafter 0.2 below the target on half the prompts: the mean difference -0.1 has a bootstrap
    # standard error of 0.1 / sqrt(40) = 0.016, so the 95% half-width is about 0.03, wider than 1% of 0.8
    note = resolution_note(*_with_target(rows([0.8] * 40, [0.6] * 20 + [0.8] * 20)))
    assert "same 40 prompts" in note and "coarser than the match band of +-0.0080" in note
    half = float(note.split("about +-")[1].split(" ")[0])
    assert 0.025 <= half <= 0.035
    # on one prompt in 40 only: a far narrower interval, finer than the band
    assert "finer than" in resolution_note(*_with_target(rows([0.8] * 40, [0.6] + [0.8] * 39)))
    assert resolution_note(rows([0.5], [0.4]), None) == ""


def _with_target(table: list[dict]) -> tuple[list[dict], dict]:
    return table, table[0]


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
    assert "paired bootstrap 95% interval" in captured.out or "no point scores differently" in captured.out
