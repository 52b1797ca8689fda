"""`deferral log` on 1 and N devices, each over a small and a large slice of the same corpus: the
difference between the two slices gives the loop's throughput without the start-up every process
pays again (loading both models, compiling the feature step, spawning ranks and joining the group).

    python benchmarks/bench_log_scaling.py --devices 2                        # GPUs
    python benchmarks/bench_log_scaling.py --devices 2 --accelerator cpu --small 4 --large 16 \
        --drafter D --target T                                                # gloo processes on CPU

Prints, per device count, the wall time of both runs, the positions they logged and the loop's
positions/s ((large - small positions) / (large - small seconds)), then the ratio of N devices to 1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOGGED = re.compile(r"logged (\d+) positions")


def log_once(args, devices: int, docs: int, out: Path) -> tuple[float, int]:
    """Wall seconds and positions of one fresh `deferral log` run."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "deferral.cli", "log", "--data", args.data, "--max-docs", str(docs),
               "--docs-per-shard", str(args.docs_per_shard), "--batch-size", str(args.batch_size),
               "--device", args.device, "--devices", str(devices), "--accelerator", args.accelerator,
               "--out", str(out), "--tracking-uri", "none", "--no-progress"]
    command += [f"--{role}={path}" for role, path in (("drafter", args.drafter), ("target", args.target)) if path]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - start
    found = LOGGED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise SystemExit(f"error: deferral log failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    return seconds, int(found[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2, help="the device count compared with 1")
    parser.add_argument("--data", default="stdlib:train")
    parser.add_argument("--small", type=int, default=48, help="documents of the small slice")
    parser.add_argument("--large", type=int, default=384, help="documents of the large slice")
    parser.add_argument("--docs-per-shard", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--drafter", default=None)
    parser.add_argument("--target", default=None)
    args = parser.parse_args(argv)
    if not 0 < args.small < args.large:
        parser.error(f"need 0 < --small < --large, got {args.small} and {args.large}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in sorted({1, args.devices}):
            (t_small, n_small), (t_large, n_large) = (log_once(args, devices, docs, Path(tmp) / f"{devices}-{docs}")
                                                      for docs in (args.small, args.large))
            rates[devices] = (n_large - n_small) / max(t_large - t_small, 1e-9)
            print(f"{devices} device(s): {args.small} docs {n_small} positions in {t_small:.1f} s, {args.large} docs "
                  f"{n_large} positions in {t_large:.1f} s; loop {rates[devices]:,.0f} positions/s, "
                  f"start-up {max(t_small - n_small / rates[devices], 0):.1f} s", flush=True)
    if args.devices != 1:
        print(f"{args.devices} devices / 1: {rates[args.devices] / rates[1]:.2f}x the loop's positions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
