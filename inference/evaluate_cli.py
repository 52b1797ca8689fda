"""`deferral evaluate`: sweep every rule's knob on a task and write the cost-quality frontier.

Writes into --out: results.jsonl (one row per rule, mode, knob and K, appended as each completes),
generations.jsonl (the decoded texts), timings.jsonl (one line per repeat of the timing stage, which
times every point interleaved with the others, --timing-repeats times on --timing-prompts prompts),
tables.md, quality_vs_latency.png, quality_vs_deferral.png, and run.json (the setup; a rerun with the
same setup skips finished rows and repeats, another setup is refused). The same results go to MLflow
(one run per output folder, resumed on rerun).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser
from tqdm import tqdm

from deferral.errors import DeferralError
from deferral.outputs import (
    DEFAULT_TRACKING_URI,
    TRACKING_HELP,
    check_output_folder,
    check_tracking_store,
    read_json_record,
    quiet_mlflow,
    read_jsonl,
    tracking_off,
)
from deferral.rules import HAND_SET_RULES
from deferral.cli_args import add_pair_arguments, parse
from inference.generate import add_decode_arguments, decode_config
from inference.runner import encode_prompts
from inference.tasks import TASK_NAMES, check_limit, check_task_name
from inference.timing import TIMINGS_FILE

ROUTER_KEY = "router"  # the setup's record of the learned rule's router (its files' sha256)
LOGGED_REFERENCE_KEYS = ("quality", "relative_latency", "relative_latency_low", "relative_latency_high")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral evaluate", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_pair_arguments(parser)
    parser.add_argument("--task", type=str, default="humaneval", help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--limit", type=int | None, default=None, help="use the task's first N examples")
    parser.add_argument("--raw-prompts", action="store_true",
                        help="humaneval: give raw function stubs even when the target has a chat template")
    parser.add_argument("--unsafe-allow-network", action="store_true",
                        help="humaneval: where this machine cannot isolate generated code (no namespaces), run it "
                             "anyway, with network, processes and files of this user within its reach")
    parser.add_argument("--prompt-column", type=str, default="prompt", help="hf task: the prompt column")
    parser.add_argument("--reference-column", type=str, default="reference", help="hf task: the reference column")
    parser.add_argument("--rules", type=list[str], default=list(HAND_SET_RULES),
                        help="rules to sweep (target, drafter and lossless speculative are always included)")
    parser.add_argument("--modes", type=list[str], default=["speculative", "sequential"],
                        help="speculative and/or sequential cascades")
    parser.add_argument("--draft-tokens-list", type=list[int] | None, default=None,
                        help="K values for speculative points (default: --draft-tokens)")
    parser.add_argument("--alpha-points", type=int, default=5, help="α values per hand-set rule, spread over its range")
    parser.add_argument("--alphas", type=dict[str, list[float]] | None, default=None,
                        help="explicit α values per rule, e.g. {chow: [0.2, 0.5]} (overrides --alpha-points)")
    parser.add_argument("--router", type=str | None, default=None, help="router export folder for the learned rule")
    parser.add_argument("--deferral-rates", type=list[float] | None, default=None,
                        help="learned rule: deferral rates to sweep (the router's calibration picks thresholds)")
    parser.add_argument("--thresholds", type=list[float] | None, default=None,
                        help="learned rule: score thresholds to sweep (instead of --deferral-rates)")
    add_decode_arguments(parser)
    parser.add_argument("--threads", type=int | None, default=None,
                        help="torch CPU threads (default: the physical cores this process may run on)")
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="after the sweep, time every point this many times on --timing-prompts prompts, "
                             "interleaved with the others (0: relative latency from the sweep's single pass)")
    parser.add_argument("--timing-prompts", type=int, default=8,
                        help="the task's first N prompts are timed (all of them when there are fewer)")
    parser.add_argument("--no-fidelity", action="store_true",
                        help="skip the target NLL / ROUGE-L-vs-target metrics (saves one target pass per prompt)")
    parser.add_argument("--out", type=str, default="runs/evaluate", help="output folder (resumed when it exists)")
    parser.add_argument("--references-from", type=str | None, default=None,
                        help="an output folder of the same setup (its router aside): take its target, drafter and "
                             "lossless speculative rows and texts instead of decoding them again (still timed here)")
    parser.add_argument("--tracking-uri", type=str, default=DEFAULT_TRACKING_URI, help=TRACKING_HELP)
    parser.add_argument("--experiment", type=str, default="deferral-evaluate", help="MLflow experiment name")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    return parser


def setup_differences(one: dict, other: dict) -> list[str]:
    return sorted(k for k in set(one) | set(other) if one.get(k) != other.get(k))


class ResultsStore:
    """results.jsonl + generations.jsonl + run.json in one folder; appends and resumes."""

    def __init__(self, out: Path, setup: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.results, self.generations, self.meta_path = out / "results.jsonl", out / "generations.jsonl", out / "run.json"
        fix = f"choose a new --out, or delete {out} to start it over"
        self.meta = read_json_record(self.meta_path, fix) if self.meta_path.is_file() else {}
        self.rows = read_jsonl(self.results, repair=True)  # a row cut by an interruption is redone
        if self.meta:
            setup = self._check_setup(self.meta.get("setup") or {}, setup)
        self.meta["setup"] = setup
        self._save_meta()
        self.done = {row["key"] for row in self.rows}
        self._drop_unfinished()

    def _check_setup(self, stored: dict, setup: dict) -> dict:
        """The setup to record, or DeferralError when the folder holds rows of another setup.

        The router's identity decides only the learned rule's rows: a run that sweeps no learned rule
        keeps the recorded router, and a folder without learned rows takes the router of this run.
        """
        stored, setup = dict(stored), dict(setup)
        if ROUTER_KEY not in setup and ROUTER_KEY in stored:
            setup[ROUTER_KEY] = stored[ROUTER_KEY]
        if ROUTER_KEY in setup and ROUTER_KEY not in stored and not any(r["rule"] == "learned" for r in self.rows):
            stored[ROUTER_KEY] = setup[ROUTER_KEY]
        if stored != setup:
            changed = setup_differences(stored, setup)
            raise DeferralError(
                f"{self.out} holds results of another setup (different {', '.join(changed) or 'settings'}): "
                "pass another --out or delete that folder"
            )
        return setup

    def _drop_unfinished(self) -> None:
        """After an interruption: keep only the generations of complete rows."""
        generations = read_jsonl(self.generations)
        kept = [g for g in generations if g["key"] in self.done]
        if len(kept) != len(generations):
            self.generations.write_text("".join(json.dumps(g) + "\n" for g in kept))

    def _save_meta(self) -> None:
        self.meta_path.write_text(json.dumps(self.meta, indent=1, default=str))

    def replies(self, key: str) -> list[str] | None:
        texts = {}
        for row in read_jsonl(self.generations):
            if row["key"] == key:
                texts[row["index"]] = row["text"]
        return [texts[i] for i in sorted(texts)] if texts else None

    def append(self, row: dict, replies: list[str], tokens: list[list[int]]) -> None:
        # Generations first: a row in results.jsonl means its texts are on disk.
        with open(self.generations, "a") as f:
            for i, (text, ids) in enumerate(zip(replies, tokens)):
                f.write(json.dumps({"key": row["key"], "index": i, "text": text, "tokens": ids}) + "\n")
        with open(self.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        self.done.add(row["key"])

    def adopt(self, folder: Path, keys: list[str]) -> None:
        """Copy the rows of `keys` this folder lacks, with their texts, from another output folder whose
        setup is this one's, the router aside (rows the other folder lacks are decoded here)."""
        meta = folder / "run.json"
        if not meta.is_file():
            raise DeferralError(f"--references-from {folder} holds no evaluation (no run.json): pass an --out of "
                                "`deferral evaluate`")
        without_router = lambda setup: {k: v for k, v in setup.items() if k != ROUTER_KEY}  # noqa: E731
        other = without_router(read_json_record(meta, f"pass another --references-from than {folder}").get("setup") or {})
        changed = setup_differences(other, without_router(self.meta["setup"]))
        if changed:
            raise DeferralError(f"--references-from {folder} holds results of another setup (different "
                                f"{', '.join(changed)}): pass a folder evaluated with the same settings")
        rows = {row["key"]: row for row in read_jsonl(folder / "results.jsonl")}
        wanted = [key for key in keys if key in rows and key not in self.done]
        texts: dict[str, dict[int, dict]] = {key: {} for key in wanted}
        for generation in read_jsonl(folder / "generations.jsonl"):
            if generation["key"] in texts:
                texts[generation["key"]][generation["index"]] = generation
        for key in wanted:
            ordered = [texts[key][i] for i in sorted(texts[key])]
            self.append(rows[key], [g["text"] for g in ordered], [g["tokens"] for g in ordered])
        if wanted:
            print(f"{', '.join(wanted)}: taken from {folder}", file=sys.stderr)

    def update(self, rows: list[dict]) -> None:
        """Replace the rows of the same keys (the timing stage's latencies) and rewrite results.jsonl
        in one step (a new file renamed over the old one)."""
        new = {row["key"]: row for row in rows}
        self.rows = [new.get(row["key"], row) for row in self.rows]
        temporary = self.results.with_name(self.results.name + ".tmp")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        os.replace(temporary, self.results)

    def set_meta(self, **values) -> None:
        self.meta.update(values)
        self._save_meta()


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


def main(argv: list[str]) -> int:
    args = parse(build_parser(), argv)
    args.no_mlflow = args.no_mlflow or tracking_off(args.tracking_uri)  # --no-mlflow: the older spelling
    if args.threads is not None and args.threads < 1:
        raise DeferralError(f"--threads must be at least 1, got {args.threads}")
    if args.timing_repeats < 0 or args.timing_prompts < 1:
        raise DeferralError(f"--timing-repeats must be >= 0 and --timing-prompts >= 1, got {args.timing_repeats} "
                            f"and {args.timing_prompts}")
    check_limit(args.limit)
    check_task_name(args.task)
    check_output_folder(args.out)  # before any decoding
    if not args.no_mlflow:
        check_tracking_store(args.tracking_uri)
    if args.task == "humaneval":  # refuse unisolated generated code now, not after hours of decoding
        from inference.tasks.sandbox import require_isolation

        require_isolation(args.unsafe_allow_network)
    import torch

    from inference.timing import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads())
    try:
        return evaluate(args)
    finally:
        torch.set_num_threads(before)  # the caller's setting, when called in-process


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
