"""Interleaved, repeated timing of a sweep's points: the decode order, the ratio and spread math on
literal numbers, the marking of a spread that crosses 1.0, and the default thread count. No
assertion here is about which point is faster."""

from __future__ import annotations

import json
import os

import pytest

from deferral.rules import make_rule
from inference.config import DecodeConfig
from inference.evaluate import BASELINE, SweepPoint, single_run_fields, timed_fields
from inference.report import crosses_one, latency_cells, latency_legend, markdown_report, ratio_cell
from inference.timing import TimingStore, default_threads, schedule, time_points

TARGET, DRAFTER, SPEC = "target|baseline|-|K=0", "drafter|baseline|-|K=0", "speculative|speculative|-|K=5"


def test_schedule_decodes_every_batch_under_every_point_and_rotates_who_goes_first():
    keys = ["a", "b", "c"]
    assert schedule(keys, 2, 0) == [(0, ["a", "b", "c"]), (1, ["b", "c", "a"])]
    assert schedule(keys, 2, 1) == [(0, ["c", "a", "b"]), (1, ["a", "b", "c"])]
    firsts = [order[0] for repeat in range(3) for _, order in schedule(keys, 2, repeat)]
    assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]  # each point leads equally often
    for repeat in range(3):
        assert all(sorted(order) == keys for _, order in schedule(keys, 2, repeat))


def test_time_points_interleaves_points_over_batches_and_records_one_line_per_repeat(tiny_pair, tmp_path, monkeypatch):
    """The real decodes, observed: each timed decode is recorded with the seconds it measured, and a
    repeat's line holds per point the sum of its decodes' seconds in that repeat."""
    import inference.timing
    from inference.evaluate import decode_point

    decoded = []

    def observed_decode(pair, rule, point, prompts, cfg, batch_size):
        generations, seconds = decode_point(pair, rule, point, prompts, cfg, batch_size)
        decoded.append((point.key, tuple(map(tuple, prompts)), cfg.seed, batch_size, seconds))
        return generations, seconds

    monkeypatch.setattr(inference.timing, "decode_point", observed_decode)
    points = [SweepPoint("target", BASELINE), SweepPoint("drafter", BASELINE),
              SweepPoint("speculative", "speculative", draft_tokens=5)]
    prompts = [[5, 6], [7, 8], [9]]  # batches of 2: [[5, 6], [7, 8]] then [[9]]
    cfg = DecodeConfig(max_new_tokens=2)
    store = TimingStore(tmp_path / "timings.jsonl", {"points": [p.key for p in points]})
    repeats = time_points(tiny_pair, [(p, make_rule(p.rule)) for p in points], prompts, cfg,
                          batch_size=2, repeats=2, store=store)
    assert len(decoded) == 2 * 2 * 3  # repeats x batches x points, each once
    keys = [key for key, *_ in decoded]
    assert keys[:3] == [TARGET, DRAFTER, SPEC]
    assert keys[3:6] == [DRAFTER, SPEC, TARGET]  # next batch: rotated
    assert keys[6:9] == [SPEC, TARGET, DRAFTER]  # next repeat: rotated on
    first_batch = ((5, 6), (7, 8))
    assert {(p, seed, b) for _, p, seed, b, _ in decoded} == {(first_batch, 0, 2), (((9,),), 2, 2)}  # the sweep's seeds
    # each repeat's line: per point, the sum of the seconds its two decodes measured in that repeat
    assert len(repeats) == 2
    for r, repeat in enumerate(repeats):
        mine = decoded[6 * r : 6 * (r + 1)]
        assert repeat == pytest.approx({k: sum(s for key, *_, s in mine if key == k) for k in (TARGET, DRAFTER, SPEC)})
        assert all(v > 0 for v in repeat.values())
    assert [json.loads(line)["seconds"] for line in (tmp_path / "timings.jsonl").read_text().splitlines()] == repeats
    # A rerun that asks for three repeats decodes only the third, and returns the recorded two unchanged.
    decoded.clear()
    store = TimingStore(tmp_path / "timings.jsonl", {"points": [p.key for p in points]})
    again = time_points(tiny_pair, [(p, make_rule(p.rule)) for p in points], prompts, cfg,
                        batch_size=2, repeats=3, store=store)
    assert len(decoded) == 2 * 3 and again[:2] == repeats
    # Another stage (other points, prompts or threads) starts from nothing.
    assert TimingStore(tmp_path / "timings.jsonl", {"points": [TARGET]}).repeats == []


def test_a_cut_last_line_of_timings_is_dropped(tmp_path):
    path = tmp_path / "timings.jsonl"
    store = TimingStore(path, {"s": 1})
    store.add({"a": 1.0})
    path.write_text(path.read_text() + '{"stage": {"s": 1}, "seco')
    assert TimingStore(path, {"s": 1}).repeats == [{"a": 1.0}]
    assert len(path.read_text().splitlines()) == 1  # repaired: the next repeat appends on a clean line


def test_relative_latency_is_the_median_of_per_repeat_ratios_with_min_and_max():
    repeats = [{TARGET: 10.0, SPEC: 9.0}, {TARGET: 20.0, SPEC: 22.0}, {TARGET: 8.0, SPEC: 6.0}]
    fields = timed_fields(repeats, SPEC, TARGET, prompts=8)
    assert fields["relative_latency"] == pytest.approx(0.9)  # ratios 0.9, 1.1, 0.75
    assert fields["relative_latency_low"] == pytest.approx(0.75)
    assert fields["relative_latency_high"] == pytest.approx(1.1)
    assert fields["timing_repeats"] == 3 and fields["timing_prompts"] == 8 and fields["timing_s"] == [9.0, 22.0, 6.0]
    target = timed_fields(repeats, TARGET, TARGET, prompts=8)
    assert target["relative_latency"] == target["relative_latency_low"] == target["relative_latency_high"] == 1.0
    even = timed_fields(repeats[:2], SPEC, TARGET, prompts=8)
    assert even["relative_latency"] == pytest.approx(1.0)  # the median of two: their mean
    single = single_run_fields(3.0, 4.0)
    assert single["relative_latency"] == 0.75 and single["relative_latency_low"] is None and single["timing_repeats"] == 0


def row(rule, value, low, high, repeats=3, mode="speculative"):
    return {"rule": rule, "mode": mode, "relative_latency": value, "relative_latency_low": low,
            "relative_latency_high": high, "timing_repeats": repeats, "timing_prompts": 8}


def test_a_ratio_whose_spread_crosses_one_is_marked():
    assert crosses_one(0.9, 1.1) and not crosses_one(0.8, 0.95) and not crosses_one(1.0, 1.0)
    assert not crosses_one(None, None)
    assert ratio_cell(0.95, 0.91, 1.02, 2) == "0.95 (0.91–1.02) ~"
    assert ratio_cell(0.80, 0.75, 0.85, 2) == "0.80 (0.75–0.85)"
    assert ratio_cell(1.25, None, None, 2) == "1.25 (1 run)"
    assert ratio_cell(None, None, None, 2) == "—"
    assert latency_cells(row("chow", 1.25, 0.8, 2.0)) == ("1.250 (0.800–2.000) ~", "0.80 (0.50–1.25) ~")
    assert latency_cells(row("chow", 0.5, 0.4, 0.8)) == ("0.500 (0.400–0.800)", "2.00 (1.25–2.50)")
    assert latency_cells(row("target", 1.0, 1.0, 1.0, mode=BASELINE)) == ("1.000", "1.00")
    assert latency_cells(row("chow", 0.5, None, None, repeats=0)) == ("0.500 (1 run)", "2.00 (1 run)")


def test_tables_mark_unsettled_ratios_and_say_how_latencies_were_measured():
    def full(rule, mode, quality, value, low, high, knob=None):
        return {**row(rule, value, low, high, mode=mode), "key": f"{rule}|{mode}|{knob}", "knob_name": "alpha",
                "knob": knob, "draft_tokens": 5 if mode != BASELINE else 0, "quality": quality, "quality_key": "chrf",
                "tokens_per_target_call": None, "target_calls_per_token": None, "deferral_rate": 0.5,
                "acceptance_rate": None, "metrics": {}}

    rows = [full("target", BASELINE, 0.3, 1.0, 1.0, 1.0), full("drafter", BASELINE, 0.2, 0.1, 0.09, 0.12),
            full("speculative", "speculative", 0.3, 1.05, 0.97, 1.10),
            full("chow", "speculative", 0.3, 0.9, 0.85, 0.95, knob=0.5)]
    text = markdown_report(rows, "t")
    # rows without per-prompt scores (results written before they were recorded) show no interval
    assert "| speculative | — | 5 | 0.300 | — | 1.050 (0.970–1.100) ~ | 0.95 (0.91–1.03) ~ |" in text
    assert "| chow | speculative | 1.11 (1.05–1.18) |" in text  # speed-up at target quality, with its spread
    assert "median over 3 repeats on 8 prompts" in text and "~: the spread crosses 1.0" in text
    assert "(1 run)" not in latency_legend(rows)
    assert "(1 run)" in latency_legend(rows + [row("chow", 0.5, None, None, repeats=0)])


def test_default_threads_counts_the_physical_cores_this_process_may_use():
    """lscpu's (socket, core) pairs among the CPUs this process may run on, capped by a cgroup v2 quota."""
    import math
    import shutil
    import subprocess
    from pathlib import Path

    lscpu = shutil.which("lscpu")
    if lscpu is None:
        pytest.skip("lscpu (util-linux) is not installed")
    listing = subprocess.run([lscpu, "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    allowed = os.sched_getaffinity(0)
    cores = {(socket, core) for cpu, core, socket in (line.split(",") for line in listing.splitlines()
                                                      if line and not line.startswith("#")) if int(cpu) in allowed}
    expected = len(cores)
    quota_file = Path("/sys/fs/cgroup/cpu.max")
    if quota_file.is_file():
        quota, period = quota_file.read_text().split()[:2]
        if quota != "max":
            expected = min(expected, math.ceil(int(quota) / int(period)))
    assert default_threads() == max(1, expected)
