"""Latencies that hold on a shared machine: every point of a sweep decodes the same few prompts,
interleaved with the other points and repeated.

Order: each repeat walks the timing prompts batch by batch (at the sweep's batch size); every batch
is decoded under every point in turn, the order rotated by one at each batch, so that no point always
runs first and a change of load lands on all points alike. A point's relative latency is the median
over repeats of (its seconds / the target's seconds in the same repeat); the lowest and highest of
those ratios are its spread. A ratio whose spread crosses 1.0 does not establish faster or slower.

Each completed repeat is one line of timings.jsonl, so an interruption loses at most the repeat
under way, and a rerun continues (or, asked for more repeats, adds to) the recorded ones.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from deferral.outputs import read_jsonl
from deferral.pair import Pair
from deferral.rules import DeferralRule
from inference.config import DecodeConfig
from inference.evaluate import SweepPoint, decode_point, warm_up

TIMINGS_FILE = "timings.jsonl"


def default_threads() -> int:
    """Physical cores this process may run on: its CPU affinity with SMT siblings counted once,
    capped by a cgroup v2 CPU quota where one is set."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    count = len(cores)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def schedule(keys: list[str], batches: int, repeat: int) -> list[tuple[int, list[str]]]:
    """One repeat's decodes: (batch index, point keys in the order they decode that batch). Every
    point decodes every batch once; the order is rotated by one at each batch of each repeat."""
    order = []
    for batch in range(batches):
        shift = (repeat * batches + batch) % len(keys)
        order.append((batch, keys[shift:] + keys[:shift]))
    return order


class TimingStore:
    """timings.jsonl: one line per completed repeat, {"stage": ..., "seconds": {point key: seconds}}.

    A stage is what a repeat's seconds are comparable within: the points timed together, the
    prompts, the batch size and the threads. Lines of other stages stay in the file and are ignored.
    """

    def __init__(self, path: Path, stage: dict):
        self.path, self.stage = path, stage
        self.repeats = [line["seconds"] for line in read_jsonl(path, repair=True) if line.get("stage") == stage]

    def add(self, seconds: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"stage": self.stage, "repeat": len(self.repeats), "seconds": seconds}) + "\n")
        self.repeats.append(seconds)


def time_points(
    pair: Pair,
    points: list[tuple[SweepPoint, DeferralRule]],
    prompts: list[list[int]],
    cfg: DecodeConfig,
    batch_size: int,
    repeats: int,
    store: TimingStore,
) -> list[dict[str, float]]:
    """Run the repeats `store` lacks (up to `repeats`); returns the first `repeats` repeats' seconds.

    The timed prompts are the task's first ones, in batches of the sweep's size (formed by length as
    `run` forms them); greedy decodes repeat the sweep's tokens, sampled ones draw their own.
    """
    by_key = {point.key: (point, rule) for point, rule in points}
    keys = list(by_key)
    starts = range(0, len(prompts), batch_size)
    batches = [(prompts[s : s + batch_size], replace(cfg, seed=cfg.seed + s)) for s in starts]
    todo = range(len(store.repeats), repeats)
    if todo:
        warm_up(pair, prompts, cfg, [(rule, point) for point, rule in points])
        bar = tqdm(total=len(todo) * len(batches) * len(keys), desc="timing", unit="decode", file=sys.stderr)
        for repeat in todo:
            seconds = dict.fromkeys(keys, 0.0)
            for batch, order in schedule(keys, len(batches), repeat):
                batch_prompts, batch_cfg = batches[batch]
                for key in order:
                    point, rule = by_key[key]
                    bar.set_postfix_str(f"repeat {repeat + 1}/{repeats} {key}")
                    seconds[key] += decode_point(pair, rule, point, batch_prompts, batch_cfg, batch_size)[1]
                    bar.update()
            store.add(seconds)
        bar.close()
    return store.repeats[:repeats]
