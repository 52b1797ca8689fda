"""`deferral calibrate`'s run: decode the calibration prompts at thresholds until every requested
rate is met (inference.decode_calibration), each measurement appended to a partial file beside
router.json (an interrupted run resumes from it), then write the table into router.json atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from deferral.calibration import decoded_rate_table
from deferral.router import META_FILE
from inference.config import DecodeConfig
from inference.decode_calibration import calibrate_by_decoding
from inference.learned import DECODE_CALIBRATION_KEY, load_learned_rule
from inference.runner import run

PARTIAL_FILE = "decode_calibration.partial.jsonl"


def read_partial(path: Path, settings: dict) -> list[dict]:
    """Measurements of an interrupted run with the same settings (else none: the file is restarted)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0].get("settings") != settings:
        return []
    return [line for line in lines[1:] if "threshold" in line]


def calibrate_export(folder: Path, meta: dict, pair, prompts: list[list[int]], cfg: DecodeConfig, settings: dict,
                     start: list[float], rates: list[float], max_rounds: int, tolerance: float,
                     batch_size: int) -> tuple[dict, list[dict]]:
    """Measure and store the decode table of the export `folder` (its router.json read as `meta`);
    `settings` describe the measurement (a partial file of other settings is restarted), `start` are
    the first thresholds to decode. Returns (the table, the measured points)."""
    alpha = settings["alpha"]
    partial = folder / PARTIAL_FILE
    measured = read_partial(partial, settings)
    if measured:
        print(f"resuming: {len(measured)} thresholds already decoded ({partial})", file=sys.stderr)
    else:
        partial.write_text(json.dumps({"settings": settings}) + "\n")

    # Counted in prompts decoded (an ETA after the first batch); the total is an upper bound: the
    # rounds stop once every rate is met.
    most = (len(start) + max_rounds * len(rates)) * len(prompts)
    bar = tqdm(total=most, desc="calibrate", unit="prompt", file=sys.stderr)
    bar.update(min(len(measured) * len(prompts), most))

    rule = load_learned_rule(str(folder), pair, threshold=0.0, alpha=alpha)  # loaded once; threshold set per decode

    def decode_at(threshold: float):
        rule.threshold = float(threshold)
        bar.set_postfix_str(f"threshold={threshold:.4f}")
        return run(pair, rule, prompts, cfg, batch_size=batch_size, on_batch=bar.update)

    def on_measured(point: dict) -> None:
        with partial.open("a") as f:
            f.write(json.dumps(point) + "\n")
        tqdm.write(f"threshold {point['threshold']:.4f}: decoded deferral rate {point['deferral_rate']:.3f} "
                   f"({point['examined']} positions examined)", file=sys.stderr)

    points = calibrate_by_decoding(decode_at, rates, start, max_rounds=max_rounds,
                                   tolerance=tolerance, measured=measured, on_measured=on_measured)
    bar.total = bar.n
    bar.close()
    table = decoded_rate_table(points, requested_rates=list(rates), **settings)
    meta[DECODE_CALIBRATION_KEY] = table
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / META_FILE)  # atomic: a kill leaves the old router.json or the new one
    partial.unlink()

    return table, points
