"""benchmarks/bench_log_scaling.py on a tiny pair and one CPU process: two real `deferral log` runs, and
the loop's rate taken from their difference."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_log_scaling  # noqa: E402


def test_scaling_reports_positions_and_the_loops_rate(tiny_dir, tmp_path, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("\n\n".join(f"paragraph {i}: " + "some words to log " * (5 + i) for i in range(6)))
    args = ["--devices", "1", "--data", str(corpus), "--small", "2", "--large", "6", "--docs-per-shard", "2",
            "--device", "cpu", "--accelerator", "cpu", "--drafter", str(tiny_dir / "drafter"),
            "--target", str(tiny_dir / "target")]
    assert bench_log_scaling.main(args) == 0
    line = capsys.readouterr().out
    small, large, rate = re.search(r"2 docs (\d+) positions .* 6 docs (\d+) positions .* loop ([\d,]+) positions/s",
                                   line).groups()
    assert 0 < int(small) < int(large) and int(rate.replace(",", "")) > 0


def test_scaling_refuses_slices_in_the_wrong_order():
    with pytest.raises(SystemExit):
        bench_log_scaling.main(["--small", "8", "--large", "4"])
