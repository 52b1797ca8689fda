"""`deferral export`: a training checkpoint (or an MLflow run's) -> a router export folder.

    deferral export --checkpoint runs/router/checkpoints/best.ckpt --out routers/stdlib
    deferral export --mlflow-run RUN_ID --out routers/stdlib [--tracking-uri sqlite:///mlflow.db]

The folder holds router.safetensors, router.json and card.md; `deferral generate --rule learned
--router DIR` uses it with torch alone.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from deferral.cli_args import add_config_flags, flag, required_flag
from deferral.errors import DeferralError
from deferral.outputs import DEFAULT_TRACKING_URI
from deferral.router import Router, RouterConfig, save_router
from deferral.rules import DEFAULT_CANDIDATES
from deferral.calibration import threshold_for_rate
from inference.learned import neutral_threshold
from training.router.module import DEFAULT_DEFERRAL_RATE

CHECKPOINT_KEY = "deferral"  # = training.router.module.CHECKPOINT_KEY (not imported: keeps lightning out)
CHECKPOINT_ARTIFACT = "checkpoints/best.ckpt"


def load_checkpoint_file(path: str | Path, fix: str, weights_only: bool = True) -> dict:
    """A checkpoint dict with a state_dict, or one DeferralError line ending with `fix`."""
    path = Path(path)
    if not path.is_file():
        raise DeferralError(f"checkpoint {path} does not exist: pass a .ckpt written by `deferral train fit`")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=weights_only)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError("no state_dict")
    except Exception as exc:  # truncated or foreign files raise several types
        raise DeferralError(f"checkpoint {path} cannot be read ({type(exc).__name__}; a cut or foreign file): {fix}") from None
    return ckpt


def read_checkpoint(path: str | Path) -> dict:
    """A router training checkpoint to export (weights only: nothing in it is unpickled)."""
    ckpt = load_checkpoint_file(path, "pass a router training checkpoint from `deferral train fit`")
    if CHECKPOINT_KEY not in ckpt:
        raise DeferralError(f"{path} is not a router training checkpoint (no router state): pass one from `deferral train fit`")
    return ckpt


def router_from_checkpoint(ckpt: dict) -> Router:
    """Rebuild the Router (weights + normalisation buffers) from a RouterModule checkpoint."""
    hp = ckpt["hyper_parameters"]
    config = RouterConfig(
        num_features=int(hp["num_features"]),
        hidden=int(hp["hidden"]),
        layers=int(hp["layers"]),
        residual=bool(hp["residual"]),
        dropout=float(hp["dropout"]),
        objective=str(hp["objective"]),
    )
    router = Router(config)
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    router.load_state_dict(state)
    return router.eval()


def default_origin(meta: dict) -> str:
    """Where the export's default threshold comes from, for its card: a rate of its calibration table,
    the objective's neutral threshold, or neither (set by hand)."""
    threshold, table, rate = meta["default_threshold"], meta.get("calibration"), meta.get("default_deferral_rate")
    if table and rate is not None and abs(threshold - threshold_for_rate(table, float(rate))) < 1e-9:
        return f"deferral rate {rate} of the calibration table below"
    if threshold == neutral_threshold(meta.get("objective")):
        return "the objective's neutral threshold; pick a deferral rate from the table below"
    return "set by hand; the table below gives the threshold of each deferral rate"


def export_meta(ckpt: dict, checkpoint_path: str, test_metrics: dict | None = None) -> dict:
    """router.json contents (besides config, normalisation and versions, added by save_router)."""
    hp, extra = ckpt["hyper_parameters"], ckpt[CHECKPOINT_KEY]
    if not extra.get("feature_spec") or not extra.get("pair"):
        raise DeferralError("the checkpoint lacks the logged data's feature spec and pair: train again with this version")
    calibration = extra.get("calibration")
    if calibration:  # the threshold of the default deferral rate, for classifiers and regressors alike
        default_threshold = threshold_for_rate(calibration, float(hp.get("default_deferral_rate", DEFAULT_DEFERRAL_RATE)))
    else:
        default_threshold = neutral_threshold(hp["objective"])
    data = extra.get("data") or {}
    return {
        "feature_spec": extra["feature_spec"],
        "pair": extra["pair"],
        "label": {"target": hp["target"], "definition": data.get("target_definition")},
        "objective": hp["objective"],
        "alpha": float(hp.get("alpha", 0.0)),
        "candidates": int(hp.get("candidates", DEFAULT_CANDIDATES)),
        "default_threshold": float(default_threshold),
        "default_deferral_rate": float(hp.get("default_deferral_rate", DEFAULT_DEFERRAL_RATE)),
        "calibration": calibration,
        "metrics": {"val": extra.get("val_metrics") or {}, "test": test_metrics or {}},
        "data": data,
        "training": {
            "checkpoint": str(checkpoint_path),
            "epoch": extra.get("epoch"),
            "hyper_parameters": {k: v for k, v in hp.items() if not k.startswith("_")},
        },
        "library_versions": {"lightning": ckpt.get("pytorch-lightning_version")},
    }


def _fmt_metrics(metrics: dict) -> str:
    rows = []
    for split in ("val", "test"):
        for name, value in sorted((metrics.get(split) or {}).items()):
            rows.append(f"| {split} | {name} | {value:.4f} |")
    return "\n".join(["| split | metric | value |", "|---|---|---|", *rows]) if rows else "(no metrics recorded)"


def card_text(meta: dict, folder: Path) -> str:
    """card.md: what the router was trained on, how well it does, how to use it, its limits."""
    pair, data, cal = meta["pair"], meta.get("data") or {}, meta.get("calibration") or {}
    target = pair.get("target", {})
    drafter = pair.get("drafter", {})
    rates = {round(r["deferral_rate"], 2): r for r in cal.get("rows", [])}
    cal_rows = [
        f"| {rate:.1f} | {rates[rate]['threshold']:.4f} | {rates[rate]['gap01_loss']:.4f} | {rates[rate]['gap_nll_loss']:.4f} |"
        for rate in (0.1, 0.2, 0.3, 0.5, 0.7)
        if rate in rates
    ]
    splits = data.get("splits") or {}
    split_text = ", ".join(f"{k}: {v['documents']} docs / {v['positions']} positions" for k, v in splits.items())
    return f"""# Deferral router

A {meta['config']['layers']}-block {'residual ' if meta['config']['residual'] else ''}MLP (hidden {meta['config']['hidden']})
over {meta['config']['num_features']} features (feature version {meta['feature_spec']['version']}) that scores
"deferral needed" for the learned rule of a speculative cascade.

## Trained on
- pair: drafter `{drafter.get('source')}`, target `{target.get('source')}`, shared vocabulary {pair.get('vocab_size')}
- data: `{data.get('path')}` (corpus: {json.dumps(data.get('corpus'))}, mode: {data.get('mode')})
- splits by document (seed {data.get('split_seed')}): {split_text}
- label: {(meta.get('label') or {}).get('definition')}; objective: {meta['objective']};
  positive rate on train: {data.get('positive_rate_train', float('nan')):.3f}

## Metrics (held-out documents)
{_fmt_metrics(meta.get('metrics') or {})}

## Calibration ({cal.get('split', '?')} split, {cal.get('positions', 0)} positions, alpha {cal.get('alpha', 0)})
A position is deferred when score - alpha·TV > threshold. Quality loss = extra 0-1 / log-loss per
position against the reference text, relative to deferring everywhere.

| deferral rate | threshold | gap01 loss | gap NLL loss |
|---|---|---|---|
{chr(10).join(cal_rows)}

Default threshold: {meta['default_threshold']:.4f} ({default_origin(meta)}).

## Use
```
deferral generate --rule learned --router {folder} --deferral-rate 0.3 --prompt "def add(a, b):" \\
    --target {target.get('source')} --drafter {drafter.get('source')}
deferral generate --rule learned --router {folder} --threshold {meta['default_threshold']:.4f} --prompt "..."
```
Loading needs torch and safetensors only. The router is refused (one-line error) by a pair whose
tokenizer, target model or vocabulary differs from the one above, and by another feature version.

## Limits
{_limits_text(meta, data)}

Versions: {json.dumps(meta.get('library_versions'))}
"""


def _limits_text(meta: dict, data: dict) -> str:
    spec = meta.get("feature_spec") or {}
    if data.get("mode") == "cascade":
        lines = ["- Trained on the decode loop's own blocks (cascade log): calibrated deferral rates count drafted",
                 "  positions as decoding does, on text like the logging generator's."]
    else:
        lines = ["- Trained on reference-text positions: deferral rates during decoding follow the model's own text",
                 "  and can differ from the calibrated ones."]
    if spec.get("lookahead"):
        lines.append("- Reads look-ahead over the drafted block: it scores the drafted token only, runs in the speculative")
        lines.append("  loop only (the sequential cascade refuses it), and defers at a position with no drafted token.")
    else:
        lines.append(f"- Scores the drafter's top {meta.get('candidates', DEFAULT_CANDIDATES)} token(s) per position; the rule defers every other "
                     "sampled token.")
    if spec.get("target_hidden") or spec.get("drafter_hidden"):
        lines.append("- Reads hidden states, which the decode loop takes from the passes it already runs.")
    return "\n".join(lines)


def export_checkpoint(checkpoint: str | Path, out: str | Path, test_metrics: dict | None = None) -> Path:
    """Write router.safetensors, router.json and card.md for `checkpoint` into `out`."""
    ckpt = read_checkpoint(checkpoint)
    router = router_from_checkpoint(ckpt)
    meta = export_meta(ckpt, str(checkpoint), test_metrics)
    folder = save_router(out, router, meta)
    full = json.loads((folder / "router.json").read_text())
    (folder / "card.md").write_text(card_text(full, folder))
    return folder


def checkpoint_from_mlflow(run_id: str, tracking_uri: str, dst: Path) -> tuple[Path, dict]:
    """Download a run's best checkpoint -> (local path, the run's test/* metrics)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        run = client.get_run(run_id)
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dst), tracking_uri=tracking_uri
        )
    except MlflowException as exc:
        raise DeferralError(
            f"MLflow run {run_id} has no {CHECKPOINT_ARTIFACT} at {tracking_uri} ({str(exc).splitlines()[0][:120]}): "
            "check --tracking-uri and the run id (mlflow ui lists runs)"
        ) from None
    metrics = {k[len("test/") :]: v for k, v in run.data.metrics.items() if k.startswith("test/")}
    return Path(local), metrics


@dataclass
class ExportOptions:
    out: str = required_flag("export folder to write")
    checkpoint: str | None = flag(None, "a .ckpt from `deferral train fit`")
    mlflow_run: str | None = flag(None, "export the best checkpoint of this MLflow run")
    tracking_uri: str = flag(DEFAULT_TRACKING_URI, "MLflow store of --mlflow-run")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="deferral export", description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these flags")
    add_config_flags(parser, ExportOptions)
    return parser


def main(argv: list[str]) -> int:
    import tempfile

    from deferral.outputs import check_output_folder
    from deferral.cli_args import parse

    args = parse(build_parser(), argv)
    if (args.checkpoint is None) == (args.mlflow_run is None):
        raise DeferralError("give exactly one of --checkpoint CKPT or --mlflow-run RUN_ID")
    check_output_folder(args.out)
    if args.checkpoint:
        folder = export_checkpoint(args.checkpoint, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt, metrics = checkpoint_from_mlflow(args.mlflow_run, args.tracking_uri, Path(tmp))
            folder = export_checkpoint(ckpt, args.out, test_metrics=metrics)
    print(f"router exported to {folder} (router.safetensors, router.json, card.md)", file=sys.stderr)
    return 0
