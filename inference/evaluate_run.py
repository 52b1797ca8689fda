"""How `deferral evaluate` runs once its flags are checked: decode every point of the sweep into the
results store, time the points interleaved and repeated, and log the run to MLflow. `args` is the
parsed namespace of inference/evaluate_cli.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from deferral.outputs import quiet_mlflow
from inference.results_store import ResultsStore
from inference.timing import TIMINGS_FILE

LOGGED_REFERENCE_KEYS = ("quality", "relative_latency", "relative_latency_low", "relative_latency_high")


def router_identity(folder: str) -> dict:
    """sha256 of the router export's two files: rows of the learned rule belong to this router only."""
    import hashlib

    from deferral.router import META_FILE, WEIGHTS_FILE

    read = lambda name: hashlib.sha256((Path(folder) / name).read_bytes()).hexdigest()  # noqa: E731
    return {"weights_sha256": read(WEIGHTS_FILE), "meta_sha256": read(META_FILE)}


def rule_factory(args, pair):
    from inference.evaluate import hand_set_rule

    def build(point):
        if point.rule != "learned":
            return hand_set_rule(point)
        from inference.learned import load_learned_rule

        return load_learned_rule(args.router, pair, **{point.knob_name: point.knob})

    return build


def short_name(source: str) -> str:
    return Path(source).name.removesuffix(".gguf") or source


def run_name(args, pair, task) -> str:
    rules = ",".join(args.rules)
    return f"evaluate {task.name} | {short_name(pair.drafter.source)} -> {short_name(pair.target.source)} | {rules}"


def sweep(args, pair, task, store: ResultsStore, points, cfg, examples, prompts) -> None:
    """Decode every point not yet in the store over all prompts, appending each row as it completes."""
    from inference.evaluate import decode_point, fidelity, summarize, warm_up

    build_rule = rule_factory(args, pair)
    scored: dict[tuple, float | None] = {}  # the target's NLL of each (prompt, reply) scored in this process
    todo = [p for p in points if p.key not in store.done]
    if len(todo) < len(points):
        print(f"resuming: {len(points) - len(todo)} of {len(points)} rows already in {store.results}", file=sys.stderr)
    if todo:
        warm_up(pair, prompts, cfg)
    # Counted in prompts, not rows: a total and an ETA after the first batch, not the first whole row.
    bar = tqdm(total=len(todo) * len(prompts), desc="sweep", unit="prompt", file=sys.stderr)
    for point in todo:
        bar.set_postfix_str(point.key)
        generations, wall_s = decode_point(pair, build_rule(point), point, prompts, cfg, args.batch_size,
                                           on_batch=bar.update)
        replies = [pair.tokenizer.decode(g.tokens, skip_special_tokens=True) for g in generations]
        metrics = task.score(examples, replies)
        if not args.no_fidelity:
            target_replies = replies if point.rule == "target" else store.replies(points[0].key)
            metrics.update(fidelity(pair, prompts, generations, replies, target_replies, scored))
        target_row = next((r for r in store.rows if r["rule"] == "target"), None)
        target_wall = wall_s if point.rule == "target" else target_row["wall_s"]
        row = summarize(point, generations, wall_s, target_wall, metrics, task.quality_key)
        store.append(row, replies, [g.tokens for g in generations])
        tqdm.write(
            f"{point.key}: {task.quality_key}={row['quality']:.3f} wall={wall_s:.1f} s "
            f"deferral={row['deferral_rate'] if row['deferral_rate'] is not None else float('nan'):.2f}",
            file=sys.stderr,
        )
    bar.close()


def timing_setup(args) -> str:
    """One line of the setup: the threads and how latencies will be timed."""
    import torch

    threads = f"torch threads: {torch.get_num_threads()} " + \
        ("(--threads)" if args.threads else "(the physical cores this process may run on; --threads N to change)")
    if not args.timing_repeats:
        return f"{threads}; relative latency: the sweep's single pass (--timing-repeats 0)"
    return (f"{threads}; relative latency: {args.timing_repeats} repeats on the first {args.timing_prompts} prompts, "
            "every point interleaved with the others")


def time_sweep(args, pair, store: ResultsStore, points, cfg, prompts) -> None:
    """The latencies of the swept rows: interleaved and repeated on the first --timing-prompts prompts
    (inference.timing, resumable in timings.jsonl), or with --timing-repeats 0 the sweep's one pass."""
    import torch

    from inference.evaluate import single_run_fields, timed_fields
    from inference.timing import TimingStore, time_points

    rows = {r["key"]: r for r in store.rows}
    target_key = points[0].key
    if args.timing_repeats == 0:
        fields = {p.key: single_run_fields(rows[p.key]["wall_s"], rows[target_key]["wall_s"]) for p in points}
    else:
        subset = prompts[: args.timing_prompts]
        stage = {"points": [p.key for p in points], "prompts": len(subset), "batch_size": args.batch_size,
                 "threads": torch.get_num_threads()}
        build_rule = rule_factory(args, pair)
        timings = TimingStore(store.out / TIMINGS_FILE, stage)
        if timings.repeats:
            print(f"resuming: {min(len(timings.repeats), args.timing_repeats)} of {args.timing_repeats} timing repeats "
                  f"already in {timings.path}", file=sys.stderr)
        repeats = time_points(pair, [(p, build_rule(p)) for p in points], subset, cfg, args.batch_size,
                              args.timing_repeats, timings)
        fields = {p.key: timed_fields(repeats, p.key, target_key, len(subset)) for p in points}
    store.update([{**rows[key], **values} for key, values in fields.items()])


def log_to_mlflow(args, store: ResultsStore, name: str, paths: dict, summaries: dict) -> str:
    """Log setup, frontier metrics, the results table and the output files to one MLflow run."""
    quiet_mlflow()
    import mlflow

    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment(args.experiment)
    run_id = store.meta.get("mlflow_run_id")
    try:
        run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
    except Exception:  # the stored run is gone (another tracking store): start afresh
        run = mlflow.start_run(run_name=name)
    with run:
        store.set_meta(mlflow_run_id=run.info.run_id)
        setup = store.meta["setup"]
        mlflow.log_params({k: json.dumps(v, default=str)[:500] for k, v in setup.items()})
        mlflow.set_tags({"rules": ",".join(args.rules), "modes": ",".join(args.modes)})
        for row in store.rows:
            if row["mode"] == "baseline" or row["rule"] == "speculative":
                prefix = row["rule"] + (f"/K{row['draft_tokens']}" if row["draft_tokens"] else "")
                mlflow.log_metrics({f"{prefix}/{k}": row[k] for k in LOGGED_REFERENCE_KEYS if row.get(k) is not None})
        for (rule, mode), summary in summaries.items():
            mlflow.log_metrics({f"{rule}/{mode}/{k}": float(v) for k, v in summary.items() if v is not None})
        columns = [k for k in store.rows[0] if k != "metrics"]
        mlflow.log_table({c: [r.get(c) for r in store.rows] for c in columns}, artifact_file="results_table.json")
        timings = store.out / TIMINGS_FILE
        for path in [store.results, store.meta_path, *paths.values(), *([timings] if timings.is_file() else [])]:
            mlflow.log_artifact(str(path))
    return run.info.run_id
