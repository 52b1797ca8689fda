"""`deferral serve` under load: requests per second and time to first token at 1, 4 and 16
concurrent clients, lossless speculative decoding vs the learned rule, one server, one run.

    python benchmarks/bench_serve.py                         # default pair, 2 CPU cores
    python benchmarks/bench_serve.py --device cuda --requests 64

Starts `deferral serve` (the real command) on a free port, then for each concurrency level and rule
sends `--requests` streaming completions of `--max-tokens` tokens from that many client threads
(prompts cycle over held-out stdlib cuts) and prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit("error: the server did not come up in time")


def one_request(client, prompt: str, max_tokens: int, cascade: dict | None) -> tuple[float, float, int]:
    """(time to first token, total seconds, completion tokens) of one streaming completion."""
    start = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, stream=True,
                                       extra_body={"cascade": cascade} if cascade else None)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - start
        if getattr(chunk, "usage", None):
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return (first if first is not None else total), total, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--router", default=str(ROOT / "models" / "default-router"))
    parser.add_argument("--threshold", type=float, default=None, help="learned rule (default: the router's own)")
    parser.add_argument("--requests", type=int, default=16, help="requests per (rule, concurrency) cell")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--batch-size", type=int, default=16, help="the server's --batch-size")
    args = parser.parse_args()
    if args.threshold is None:  # the router's own default threshold
        from inference.learned import export_default_threshold

        args.threshold = export_default_threshold(args.router)
    from openai import OpenAI

    prompts = [json.loads(line)["prompt"][-600:] for line in
               (ROOT / "benchmarks" / "data" / "stdlib_heldout.jsonl").read_text().splitlines()[:64]]
    port = free_port()
    cmd = [sys.executable, "-m", "deferral.cli", "serve", "--port", str(port), "--device", args.device,
           "--router", args.router, "--batch-size", str(args.batch_size), "--max-queue", "256"]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": path})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
        one_request(client, prompts[0], 4, None)  # warm-up
        rules = {"lossless speculative": None,
                 f"learned (threshold {args.threshold})": {"rule": "learned", "threshold": args.threshold}}
        print("| rule | clients | requests/s | tokens/s | time to first token median / p90 (s) |")
        print("|---|---|---|---|---|")
        for clients in [int(c) for c in args.concurrency.split(",")]:
            for name, cascade in rules.items():
                work = [prompts[i % len(prompts)] for i in range(args.requests)]
                start = time.perf_counter()
                with ThreadPoolExecutor(clients) as pool:
                    results = list(pool.map(lambda p: one_request(client, p, args.max_tokens, cascade), work))
                wall = time.perf_counter() - start
                ttft = sorted(r[0] for r in results)
                p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
                tokens = sum(r[2] for r in results)
                print(f"| {name} | {clients} | {len(work) / wall:.2f} | {tokens / wall:.1f} | "
                      f"{statistics.median(ttft):.2f} / {p90:.2f} |", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
