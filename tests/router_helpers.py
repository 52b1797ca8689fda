"""Shared steps of the router tests: log a small corpus on the tiny pair, train a router on it.

Everything runs through the real `deferral` console entry point (in-process), as a user would.
"""

from __future__ import annotations

import random
from pathlib import Path

from deferral.cli import main as deferral

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "router.yaml")
WORDS = ["def", "return", "x", "y", "for", "in", "range", "(", ")", ":", "print", "if", "else", "=", "+", "1", "0"]


def write_corpus(path: Path, docs: int = 24, words: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    text = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(docs))
    path.write_text(text + "\n")
    return path


def log_tiny(tiny_dir: Path, out: Path, target: str = "target", docs: int = 24, words: int = 40) -> Path:
    corpus = write_corpus(out.parent / f"{out.name}-corpus.txt", docs=docs, words=words)
    rc = deferral(
        ["log", "--drafter", str(tiny_dir / "drafter"), "--target", str(tiny_dir / target), "--data", str(corpus),
         "--out", str(out), "--no-tracking", "--no-progress"]
    )
    assert rc == 0
    return out


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def train_tiny(log_dir: Path, root: Path, store: Path, epochs: int = 2, extra: tuple[str, ...] = ()) -> int:
    """`deferral train fit` with configs/router.yaml and the documented overrides."""
    return deferral(
        ["train", "fit", "--config", CONFIG, "--data.path", str(log_dir), "--trainer.max_epochs", str(epochs),
         "--trainer.default_root_dir", str(root), "--data.target", "gap_nll", "--model.objective", "classify",
         "--mlflow.tracking_uri", tracking_uri(store), "--mlflow.artifact_location", str((store / "artifacts").resolve()),
         "--trainer.enable_progress_bar", "false", *extra]
    )


def trained_tiny_router(tiny_dir: Path, base: Path, epochs: int = 2) -> tuple[Path, Path]:
    """Log a small corpus and train a router on the tiny pair under `base`; return (base, log folder)."""
    log_dir = log_tiny(tiny_dir, base / "log")
    assert train_tiny(log_dir, base / "run", base, epochs=epochs) == 0
    return base, log_dir


def export_tiny_router(tiny_dir: Path, base: Path, docs: int, words: int, epochs: int) -> tuple[Path, Path]:
    """Log, train (document splits of 50/25/25) and export a router on the tiny pair under `base`.

    Returns (export folder, log folder).
    """
    log_dir = log_tiny(tiny_dir, base / "log", docs=docs, words=words)
    split = ("--data.val_fraction", "0.25", "--data.test_fraction", "0.25")
    assert train_tiny(log_dir, base / "run", base, epochs=epochs, extra=split) == 0
    out = base / "router"
    assert deferral(["export", "--checkpoint", str(base / "run" / "checkpoints" / "best.ckpt"), "--out", str(out)]) == 0
    return out, log_dir


def write_synthetic_log(out: Path, docs: int = 30, per_doc: int = 200, vocab: int = 50, seed: int = 0) -> Path:
    """A logged dataset in the `deferral log` format without running models: random drafter/target
    logits through the real feature and label functions, reference tokens drawn from the target."""
    import numpy as np
    import torch

    from deferral.features import FeatureSpec, compute_features
    from tests.labels_helper import token_labels
    from training.logs import logged_data as fmt

    g = torch.Generator().manual_seed(seed)
    n = docs * per_doc
    p_logits = torch.randn(n, vocab, generator=g) * 3
    q_logits = p_logits + torch.randn(n, vocab, generator=g) * 2  # a noisy copy: the drafter
    reference = torch.multinomial(torch.softmax(p_logits, -1), 1, generator=g)[:, 0]
    drafted = q_logits.argmax(-1)
    rows = {k: v.numpy() for k, v in token_labels(q_logits, p_logits, reference, drafted).items()}
    rows["features"] = compute_features(q_logits, p_logits, drafted[:, None])[:, 0, :].numpy()
    rows["doc_id"] = np.repeat(np.arange(docs), per_doc)
    rows["position"] = np.tile(np.arange(per_doc), docs)
    rows["token_id"], rows["drafted_id"] = reference.numpy(), drafted.numpy()
    spec = FeatureSpec()
    identity = {"vocab_size": vocab, "target": {"source": "synthetic", "tokenizer_sha256": "t", "config_sha256": "c"},
                "drafter": {"source": "synthetic"}}
    out.mkdir(parents=True, exist_ok=True)
    corpus = {"kind": "synthetic", "seed": seed, "docs": docs, "per_doc": per_doc}  # its identity, like a real corpus hash
    fmt.write_json_atomic(out / "meta.json", fmt.build_meta(spec, identity, corpus, "reference"))
    fmt.write_shard(fmt.shard_path(out, 0, 0), fmt.arrow_table(rows, spec.dim))
    return out
