"""The logging loop: documents -> token windows -> both models' teacher-forced logits -> features + labels.

Pure apart from running the models: no files, no flags. `log_chunk` turns one chunk of documents into
the rows of one shard (numpy columns sorted by doc_id, then position); the CLI and the distributed
loop decide which chunks to run and where to write them.

A row at (doc_id, position t) describes the prediction of token t+1 from tokens 0..t: token_id is
that next token, drafted_id the drafter's argmax, features and labels come from the two models'
logits at t. Documents longer than --max-len are cut into windows overlapping by one token, so
every next token is predicted exactly once (with the context of its own window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deferral.cli_args import flag
from deferral.errors import DeferralError
from deferral.features import FeatureSpec, compute_features
from deferral.labels import CONSEQUENCE_LABELS, labels_with_features
from deferral.pair import Pair
from training.logs.mixed_corpus import strip_chat_marker

HIDDEN_CHOICES = ("none", "drafter", "target", "both")
MODES = ("reference", "on-policy", "cascade")
LOG_FLAGS_SKIPPED = ("generator", "compile")  # LogConfig fields whose flags take unresolved values
FEATURE_ROWS = 64  # positions turned into features at once: keeps the (rows, vocab) float32 temporaries cache-sized (256 rows: ratio 0.82 to bare forwards; 64 rows: 0.89-0.90)


@dataclass(frozen=True)
class LogConfig:
    """What decides the rows of a log; the fields but generator and compile are flags of `deferral log`
    (those two take CLI values that are resolved first: a mode-dependent default, "auto")."""

    max_len: int = flag(512, "tokens per window scored in one pass (capped by the models' context)")
    batch_size: int = flag(8, "windows per forward pass")
    hidden: str = flag("none", f"append last hidden states to the features: {', '.join(HIDDEN_CHOICES)}")
    mode: str = flag("reference", "reference: score the corpus text; on-policy: score continuations generated "
                                  "from its prompts; cascade: log the decode loop's own drafted blocks with "
                                  "look-ahead features and consequence labels from target roll-outs "
                                  "(see docs/logging.md)")
    prompt_tokens: int = flag(64, "on-policy/cascade: prompt length (tokens) taken from each document")
    max_new_tokens: int = flag(64, "on-policy/cascade: tokens generated per prompt")
    generator: str = "target"  # a rule name: 'target' or a cascade rule run by inference.runner
    alpha: float | None = flag(None, "on-policy: the knob of a cascade generator")
    temperature: float = flag(0.0, "on-policy: sampling temperature (0 = greedy)")
    draft_tokens: int = flag(5, "on-policy: tokens drafted per step by a cascade")
    seed: int = flag(0, "on-policy/cascade: random seed (sampling, prompt cuts)")
    horizon: int = flag(16, "cascade: target tokens rolled out after each choice for the consequence labels")
    rollout_batch_size: int = flag(64, "cascade: sequences per roll-out batch (speed only)")
    compile: bool = False  # torch.compile the feature + label step (fused kernels; a one-off compile cost)
    # (resolve "auto" with should_compile before building a LogConfig)

    def validate(self) -> None:
        if self.max_len < 2:
            raise DeferralError(f"--max-len must be at least 2 tokens, got {self.max_len}")
        if self.batch_size < 1:
            raise DeferralError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.hidden not in HIDDEN_CHOICES:
            raise DeferralError(f"--hidden {self.hidden} is unknown: choose one of {', '.join(HIDDEN_CHOICES)}")
        if self.mode not in MODES:
            raise DeferralError(f"--mode {self.mode} is unknown: choose one of {', '.join(MODES)}")
        if self.horizon < 1 or self.rollout_batch_size < 1:
            raise DeferralError(f"--horizon and --rollout-batch-size must be at least 1, got {self.horizon}, "
                                f"{self.rollout_batch_size}")
        if self.mode in ("on-policy", "cascade"):
            from deferral.rules import make_rule, warn_alpha_outside_range

            if self.prompt_tokens < 1:
                raise DeferralError(f"--prompt-tokens must be at least 1, got {self.prompt_tokens}")
            if self.mode == "cascade" and self.generator in ("target", "drafter"):
                raise DeferralError(f"--mode cascade logs a cascade's blocks: --generator {self.generator} drafts "
                                    "none; use speculative or a cascade rule")
            if self.generator == "drafter":
                raise DeferralError("--generator drafter would log the drafter's own text: use target or a cascade rule")
            if self.generator == "learned":
                raise DeferralError("--generator learned needs a router, which `deferral log` does not load: "
                                    "log with speculative or a hand-set rule (chow, opt, token-v3, ...) as --generator")
            make_rule(self.generator, self.alpha)  # an unknown rule or a missing alpha fails here, before any work
            warn_alpha_outside_range(self.generator, self.alpha)


@dataclass
class Window:
    """Tokens [start, start + len(tokens)) of one document; rows are logged from local index log_from."""

    doc_id: int
    start: int
    tokens: list[int]
    log_from: int = 0


def feature_spec(pair: Pair, hidden: str, mode: str = "reference") -> FeatureSpec:
    """The feature layout a log of `mode` holds: cascade logs add the block's look-ahead."""
    width = lambda m: int(m.model.config.hidden_size)  # noqa: E731
    return FeatureSpec(
        drafter_hidden=width(pair.drafter) if hidden in ("drafter", "both") else 0,
        target_hidden=width(pair.target) if hidden in ("target", "both") else 0,
        lookahead=mode == "cascade",
    )


COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MIN_VOCAB = 4096  # below this the per-position work is too small to repay compiling


def should_compile(choice: str, vocab_size: int) -> bool:
    """auto: compile for real vocabularies, where features and labels cost as much as the forward passes."""
    if choice not in COMPILE_CHOICES:
        raise DeferralError(f"--compile {choice} is unknown: choose auto, on or off")
    return choice == "on" or (choice == "auto" and vocab_size >= COMPILE_MIN_VOCAB)


def effective_max_len(pair: Pair, max_len: int) -> int:
    return max(2, min(max_len, pair.max_context))


def tokenize(pair: Pair, text: str) -> list[int]:
    return [int(i) for i in pair.tokenizer(text, add_special_tokens=True)["input_ids"]]


def make_windows(doc_id: int, ids: list[int], max_len: int, log_from: int = 0) -> list[Window]:
    """Windows of at most max_len tokens covering every prediction t -> t+1 with t >= log_from once."""
    windows, start = [], 0
    while start < len(ids) - 1:
        tokens = ids[start : start + max_len]
        if start + len(tokens) - 1 > log_from:  # this window predicts some token at t >= log_from
            windows.append(Window(doc_id, start, tokens, max(0, log_from - start)))
        start += max_len - 1
    return windows


def rows_from_logits(
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    next_tokens: torch.Tensor,
    drafter_hidden: torch.Tensor | None = None,
    target_hidden: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Features and labels at N positions from (N, V) logits and the (N,) tokens that follow.

    drafted = argmax q; features = compute_features(q, p, drafted[:, None], ...)[:, 0] (N, F).
    """
    drafted = q_logits.argmax(-1)  # (N,)
    features = compute_features(q_logits, p_logits, drafted[:, None], drafter_hidden, target_hidden)[:, 0, :]
    missing = torch.full_like(drafted, float("nan"), dtype=torch.float32)  # consequence labels: cascade logs only
    return {
        **{name: missing for name in CONSEQUENCE_LABELS},
        "token_id": next_tokens,
        "drafted_id": drafted,
        "features": features,
        **labels_with_features(features, FeatureSpec().names, q_logits, p_logits, next_tokens, drafted),
    }


_COMPILED: dict = {}


def _rows_fn(compiled: bool):
    """rows_from_logits, or its torch.compile'd form (static shapes: callers pad to FEATURE_ROWS rows)."""
    if not compiled or _COMPILED.get("failed"):
        return rows_from_logits
    if "rows" not in _COMPILED:
        _COMPILED["rows"] = torch.compile(rows_from_logits, dynamic=False)
    return _COMPILED["rows"]


def _compiled_rows(*inputs) -> dict[str, torch.Tensor]:
    """The compiled step; if this platform cannot compile (no C++ compiler, no Triton), eager from then on."""
    try:
        return _rows_fn(True)(*[_pad_rows(t, FEATURE_ROWS) for t in inputs])
    except Exception as exc:  # torch raises backend-specific error types
        import warnings

        _COMPILED["failed"] = True
        warnings.warn(f"torch.compile failed ({type(exc).__name__}); computing features eagerly", stacklevel=2)
        return rows_from_logits(*inputs)


def _pad_rows(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """Pad the first axis to n rows (repeating row 0) so compiled code sees one shape."""
    if t is None or t.shape[0] == n:
        return t
    return torch.cat([t, t[:1].expand(n - t.shape[0], *t.shape[1:])])


def _forward(model, input_ids: torch.Tensor, mask: torch.Tensor, vocab: int, want_hidden: bool):
    """(B, L) ids -> (B, L, V) logits cut to the shared vocabulary, and (B, L, H) last hidden or None."""
    out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=want_hidden, use_cache=False)
    hidden = out.hidden_states[-1] if want_hidden else None
    return out.logits[..., :vocab], hidden


@torch.inference_mode()
def score_windows(
    pair: Pair, windows: list[Window], hidden: str = "none", pad_id: int = 0, compiled: bool = False
) -> dict[str, np.ndarray]:
    """One batch: pad the windows, run both models teacher-forced, return numpy row columns."""
    device = pair.device
    longest = max(len(w.tokens) for w in windows)
    ids = torch.full((len(windows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), longest), dtype=torch.long)
    # valid[b, t]: row logged for window b at local index t (a next token exists and t >= log_from)
    valid = torch.zeros((len(windows), longest), dtype=torch.bool)
    for b, w in enumerate(windows):
        ids[b, : len(w.tokens)] = torch.tensor(w.tokens)
        mask[b, : len(w.tokens)] = 1
        valid[b, w.log_from : len(w.tokens) - 1] = True
    ids, mask = ids.to(device), mask.to(device)
    q_logits, q_hidden = _forward(pair.drafter.model, ids, mask, pair.vocab_size, hidden in ("drafter", "both"))
    p_logits, p_hidden = _forward(pair.target.model, ids, mask, pair.vocab_size, hidden in ("target", "both"))

    next_ids = torch.roll(ids, -1, dims=1)  # next_ids[b, t] = ids[b, t + 1] where valid
    b_idx, t_idx = valid.nonzero(as_tuple=True)  # row order: window, then position
    b_dev, t_dev = b_idx.to(device), t_idx.to(device)
    parts: list[dict[str, torch.Tensor]] = []
    use_compiled = compiled and not _COMPILED.get("failed")
    for s in range(0, len(b_idx), FEATURE_ROWS):
        bs, ts = b_dev[s : s + FEATURE_ROWS], t_dev[s : s + FEATURE_ROWS]
        inputs = [q_logits[bs, ts], p_logits[bs, ts], next_ids[bs, ts],
                  q_hidden[bs, ts] if q_hidden is not None else None,
                  p_hidden[bs, ts] if p_hidden is not None else None]
        part = _compiled_rows(*inputs) if use_compiled else rows_from_logits(*inputs)
        parts.append({k: v[: len(bs)] for k, v in part.items()})
    rows = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
    starts = torch.tensor([w.start for w in windows])
    rows["doc_id"] = torch.tensor([w.doc_id for w in windows])[b_idx].numpy()
    rows["position"] = (starts[b_idx] + t_idx).numpy()
    return rows


def _batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    """Group windows of similar length (longest first) so padding stays small; deterministic."""
    order = sorted(windows, key=lambda w: (-len(w.tokens), w.doc_id, w.start))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _on_policy_windows(pair: Pair, docs: list[tuple[int, list[int]]], cfg: LogConfig, max_len: int) -> list[Window]:
    """Prompts from the documents, continuations generated by cfg.generator; windows over the new tokens."""
    from deferral.rules import make_rule
    from inference.config import DecodeConfig
    from inference.runner import run

    prompt_len = max(1, min(cfg.prompt_tokens, max_len - 1))
    prompts = [(doc_id, ids[:prompt_len]) for doc_id, ids in docs if ids]
    if not prompts:
        return []
    new_tokens = max(1, min(cfg.max_new_tokens, max_len - prompt_len))
    decode = DecodeConfig(
        draft_tokens=cfg.draft_tokens,
        temperature=cfg.temperature,
        max_new_tokens=new_tokens,
        seed=cfg.seed + prompts[0][0],  # depends on the chunk, not on how the run was interrupted
    )
    rule = make_rule(cfg.generator, cfg.alpha)
    generations = run(pair, rule, [ids for _, ids in prompts], decode, batch_size=cfg.batch_size)
    windows = []
    for (doc_id, prompt), gen in zip(prompts, generations):
        sequence = prompt + [int(t) for t in gen.tokens]
        windows += make_windows(doc_id, sequence, max_len, log_from=len(prompt) - 1)
    return windows


def _first_windows(windows: list[Window], max_rows: int) -> list[Window]:
    """The windows (in document order) that hold the first max_rows rows."""
    kept, rows = [], 0
    for w in windows:
        if rows >= max_rows:
            break
        kept.append(w)
        rows += len(w.tokens) - 1 - w.log_from
    return kept


def log_chunk(
    pair: Pair, documents: list[tuple[int, str]], cfg: LogConfig, progress=None, max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """Rows of one chunk of (doc_id, text) documents, sorted by (doc_id, position).

    `progress(n_positions)` is called after each batch (a tqdm update, for example). `max_rows`
    keeps only the first rows in document order, and skips scoring the windows beyond them.
    """
    if cfg.mode == "cascade":
        from training.logs.cascade_log import cascade_chunk

        rows = cascade_chunk(pair, documents, cfg, feature_spec(pair, cfg.hidden, cfg.mode), progress)
        if rows is None:
            return empty_rows(feature_spec(pair, cfg.hidden, cfg.mode).dim)
        order = np.lexsort((rows["position"], rows["doc_id"]))[:max_rows]
        return {k: v[order] for k, v in rows.items()}
    max_len = effective_max_len(pair, cfg.max_len)
    tokenized = [(doc_id, tokenize(pair, strip_chat_marker(text))) for doc_id, text in documents]
    if cfg.mode == "on-policy":
        windows = _on_policy_windows(pair, tokenized, cfg, max_len)
    else:
        windows = [w for doc_id, ids in tokenized for w in make_windows(doc_id, ids, max_len)]
    if max_rows is not None:
        windows = _first_windows(windows, max_rows)
    parts = []
    for batch in _batches(windows, cfg.batch_size):
        rows = score_windows(pair, batch, cfg.hidden, pad_id=pair.pad_id, compiled=cfg.compile)
        parts.append(rows)
        if progress is not None:
            progress(len(rows["doc_id"]))
    if not parts:
        return empty_rows(feature_spec(pair, cfg.hidden, cfg.mode).dim)
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((rows["position"], rows["doc_id"]))[:max_rows]
    return {k: v[order] for k, v in rows.items()}


def empty_rows(feature_dim: int) -> dict[str, np.ndarray]:
    from training.logs.logged_data import COLUMNS

    rows = {c: np.zeros(0) for c in COLUMNS}
    rows["features"] = np.zeros((0, feature_dim), dtype=np.float32)
    return rows


