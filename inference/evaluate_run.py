"""How `deferral evaluate` runs once its flags are checked: decode every point of the sweep into the
results store, time the points interleaved and repeated, and log the run to MLflow. `args` is the
parsed namespace of inference/evaluate_cli.py (its SweepOptions, RunOptions, pair and decode flags)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from deferral.errors import DeferralError
from deferral.outputs import quiet_mlflow
from deferral.rules import HAND_SET_RULES
from inference.generate import decode_config
from inference.results_store import ROUTER_KEY, ResultsStore
from inference.runner import encode_prompts
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
    from inference.tasks.text_metrics import mean_metrics

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
        per_example = task.score_examples(examples, replies)
        metrics = mean_metrics(per_example)
        if not args.no_fidelity:
            target_replies = replies if point.rule == "target" else store.replies(points[0].key)
            metrics.update(fidelity(pair, prompts, generations, replies, target_replies, scored))
        target_row = next((r for r in store.rows if r["rule"] == "target"), None)
        target_wall = wall_s if point.rule == "target" else target_row["wall_s"]
        row = summarize(point, generations, wall_s, target_wall, metrics, task.quality_key,
                        [m[task.quality_key] for m in per_example])
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


def make_task_from_args(args, pair):
    from inference.tasks import make_task

    chat = None
    if args.task == "humaneval":
        chat = bool(getattr(pair.tokenizer, "chat_template", None)) and not args.raw_prompts
    elif args.chat:
        chat = True
    return make_task(args.task, limit=args.limit, chat=chat, seed=args.seed,
                     prompt_column=args.prompt_column, reference_column=args.reference_column)


def alphas_for(args) -> dict[str, list[float]]:
    from inference.evaluate import alpha_grid

    explicit = args.alphas or {}
    unknown = set(explicit) - set(HAND_SET_RULES)
    if unknown:
        raise DeferralError(f"alphas given for unknown rule(s) {sorted(unknown)}: use {', '.join(HAND_SET_RULES)}")
    return {r: explicit.get(r) or alpha_grid(r, args.alpha_points) for r in args.rules if r in HAND_SET_RULES}


def learned_knob(args) -> tuple[str, list[float]] | None:
    if "learned" not in args.rules:
        return None
    if not args.router:
        raise DeferralError("rule 'learned' needs --router DIR (an export from `deferral export`)")
    if (args.deferral_rates is None) == (args.thresholds is None):
        raise DeferralError("rule 'learned' needs exactly one of --deferral-rates or --thresholds")
    if args.deferral_rates is not None:
        if not all(0.0 <= r <= 1.0 for r in args.deferral_rates):
            raise DeferralError(f"--deferral-rates must lie in [0, 1], got {args.deferral_rates}")
        return "deferral_rate", args.deferral_rates
    return "threshold", args.thresholds


def block_rules(args) -> frozenset[str]:
    """{"learned"} when the router reads look-ahead features (no sequential form), else empty."""
    if "learned" not in args.rules or not args.router:
        return frozenset()
    from deferral.features import FeatureSpec
    from deferral.router import read_router_meta

    spec = read_router_meta(args.router).get("feature_spec") or {}
    uses_block = "version" in spec and FeatureSpec.from_dict(spec).block_features
    return frozenset({"learned"}) if uses_block else frozenset()


def evaluate(args) -> int:
    from deferral.pair import load_pair
    from inference.evaluate import REFERENCE_RULES, plan_sweep
    from inference.report import summaries, write_report

    cfg = decode_config(args)
    ks = args.draft_tokens_list or [args.draft_tokens]
    points = plan_sweep(args.rules, args.modes, ks, alphas_for(args), learned_knob(args), block_rules(args))
    pair = load_pair(args.drafter, args.target, device=args.device, dtype=args.dtype)
    if "learned" in args.rules:  # a router for another pair fails now, not after the reference rows
        from inference.learned import check_router

        check_router(args.router, pair)
    task = make_task_from_args(args, pair)
    if args.task == "humaneval":
        task.unsafe_allow_network = args.unsafe_allow_network
    setup = {
        "pair": pair.identity(),
        "task": task.describe(),
        "decode": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                   "seed": cfg.seed},
        "batch_size": args.batch_size,
        "fidelity": not args.no_fidelity,
    }
    if "learned" in args.rules:
        setup[ROUTER_KEY] = router_identity(args.router)
    store = ResultsStore(Path(args.out), setup)
    examples = task.examples()
    prompts = encode_prompts(pair, [e.prompt for e in examples], chat=task.chat)
    if args.references_from:
        store.adopt(Path(args.references_from), [p.key for p in points if p.rule in REFERENCE_RULES])
    print(timing_setup(args), file=sys.stderr)
    sweep(args, pair, task, store, points, cfg, examples, prompts)
    time_sweep(args, pair, store, points, cfg, prompts)
    wanted = {p.key for p in points}
    rows = [r for r in store.rows if r["key"] in wanted]
    name = run_name(args, pair, task)
    paths = write_report(rows, store.out, name)
    print(paths["tables"].read_text())
    if not args.no_mlflow:
        run_id = log_to_mlflow(args, store, name, paths, summaries(rows))
        print(f"MLflow run {run_id} in {args.tracking_uri} (experiment '{args.experiment}')", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in [store.results, *paths.values()])}", file=sys.stderr)
    return 0
