"""Consequence labels: what keeping the drafter's token instead of the target's does downstream.

At a drafted position with context c (prompt + committed tokens + the earlier drafts of its block),
the drafter proposes x and the target's greedy choice is a. Where x != a, two greedy roll-outs of
the target, `horizon` tokens each, show what the choice changes:
    original  a + C_a   (C_a = the target's continuation after c + a)
    swapped   x + C_x   (C_x = the target's continuation after c + x)
and give these labels (agreeing positions, x == a, get the no-harm values 0 / 0 / 1 / 1 / 0):
- label_ll_drop      mean per token of log p(C_a | c, a) - log p(C_a | c, x): how much less the
                     target believes its own original continuation once x is in (SelfJudge's signal);
- label_path_drop    log p(a + C_a | c) - log p(x + C_x | c), summed over the 1 + horizon tokens: how
                     much less likely the target finds the path that starts with x than its own. With
                     horizon 0 this is log p(a) - log p(x), the statistic TokenV3 thresholds; the roll-out
                     adds whether the target recovers after x (a near-tie that derails costs more);
- label_rollout_chrf chrF of the swapped text x + C_x against the original a + C_a (1 = same text);
- label_same_line    1 when both texts agree up to their first newline (the rest of the line survives);
- label_ref_gain     where the prompt was cut from a document whose real next lines are known:
                     chrF against them of (generated so far + x + C_x) minus that of
                     (generated so far + a + C_a): > 0 where the drafter's token makes the text
                     closer to the reference, < 0 where it makes it worse (0 where x == a; NaN
                     without a reference, e.g. chat replies).
The router's "harm" target is 1 - label_rollout_chrf; its "ref_harm" target is -label_ref_gain.

Cost per labelled mismatch: two batched greedy roll-outs of `horizon` target steps and three
teacher-forced target passes over context + 1 + horizon tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inference.autoregressive import autoregressive_generate
from inference.batch import left_pad
from inference.config import DecodeConfig, TokenSpace
from inference.tasks.text_metrics import chrf, first_line



@dataclass(frozen=True)
class RolloutConfig:
    horizon: int = 16  # target tokens generated after each of the two choices
    batch_size: int = 64  # sequences per roll-out / scoring batch


def _by_length(contexts: list[list[int]], batch_size: int):
    """Index batches of similar context length (less padding); deterministic."""
    order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def greedy_rollouts(pair, contexts: list[list[int]], cfg: RolloutConfig, tokens: TokenSpace) -> list[list[int]]:
    """The target's greedy continuation (up to cfg.horizon tokens, stopping at EOS) of each context."""
    decode = DecodeConfig(max_new_tokens=cfg.horizon, temperature=0.0, draft_tokens=1)
    out: list[list[int]] = [[] for _ in contexts]
    for batch in _by_length(contexts, cfg.batch_size):
        gens = autoregressive_generate(
            pair.target.model, [contexts[i] for i in batch], decode, tokens,
        )
        for i, gen in zip(batch, gens):
            out[i] = [int(t) for t in gen.tokens]
    return out


@torch.inference_mode()
def continuation_token_logprobs(
    pair, contexts: list[list[int]], continuations: list[list[int]], batch_size: int
) -> list[np.ndarray]:
    """log p of every token of each continuation given its context under the target: N float32 arrays,
    one entry per continuation token (empty for an empty continuation).

    Rows are left-padded so every continuation ends at the last column, and only the last
    (longest continuation + 1) positions go through the output projection: a (b, L, V) float32
    logits tensor over whole contexts would cost gigabytes at a 49k vocabulary.
    """
    result = [np.zeros(0, dtype=np.float32) for _ in contexts]
    device = pair.device
    for batch in _by_length(contexts, batch_size):
        seqs = [contexts[i] + continuations[i] for i in batch]
        keep = max(len(continuations[i]) for i in batch) + 1
        ids, mask = left_pad(seqs, pair.pad_id, device)  # (b, width)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = pair.target.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            use_cache=False, logits_to_keep=keep,
        ).logits  # (b, keep, V): the last `keep` positions
        logp = torch.log_softmax(logits[..., : pair.vocab_size].float(), -1)
        for r, i in enumerate(batch):
            n_cont = len(continuations[i])
            if n_cont == 0:
                continue
            targets = torch.tensor(continuations[i], device=device)
            # the continuation fills the last n_cont columns; token t is predicted at column t - 1
            steps = logp[r, keep - 1 - n_cont : keep - 1].gather(-1, targets[:, None])[:, 0]
            result[i] = steps.cpu().numpy().astype(np.float32)
    return result


def consequence_labels(
    pair,
    contexts: list[list[int]],
    drafted: np.ndarray,
    target_argmax: np.ndarray,
    cfg: RolloutConfig,
    tokens: TokenSpace,
    generated: list[list[int]] | None = None,
    references: list[str | None] | None = None,
) -> dict[str, np.ndarray]:
    """The consequence labels (deferral.labels.CONSEQUENCE_LABELS) for N drafted positions (see the module docstring).

    contexts: N token lists (what precedes each drafted token); drafted, target_argmax: (N,) ints;
    generated: N token lists (the part of each context written after the prompt) and references: N
    texts (or None) that the prompt's document continues with, for label_ref_gain.
    """
    n = len(contexts)
    ll_drop = np.zeros(n, dtype=np.float32)
    path_drop = np.zeros(n, dtype=np.float32)
    sim = np.ones(n, dtype=np.float32)
    same = np.ones(n, dtype=np.float32)
    references = references or [None] * n
    ref_gain = np.array([0.0 if ref is not None else np.nan for ref in references], dtype=np.float32)
    todo = np.flatnonzero(np.asarray(drafted) != np.asarray(target_argmax))
    if todo.size:
        orig_ctx = [contexts[i] + [int(target_argmax[i])] for i in todo]
        swap_ctx = [contexts[i] + [int(drafted[i])] for i in todo]
        rolled = greedy_rollouts(pair, orig_ctx + swap_ctx, cfg, tokens)
        c_orig, c_swap = rolled[: todo.size], rolled[todo.size :]
        # from the context before the choice: a + C_a (own path), x + C_a (C_a after x), x + C_x (x's path)
        before = [contexts[i] for i in todo]
        lp = continuation_token_logprobs(
            pair, before * 3,
            [[int(target_argmax[i])] + c for i, c in zip(todo, c_orig)]
            + [[int(drafted[i])] + c for i, c in zip(todo, c_orig)]
            + [[int(drafted[i])] + c for i, c in zip(todo, c_swap)],
            cfg.batch_size,
        )
        own, after_x, x_path = lp[: todo.size], lp[todo.size : 2 * todo.size], lp[2 * todo.size :]
        for m, i in enumerate(todo):
            # the first entry scores the choice itself; C_a's tokens follow it
            ll_drop[i] = own[m][1:].mean() - after_x[m][1:].mean() if c_orig[m] else 0.0
            path_drop[i] = own[m].sum() - x_path[m].sum()
        decode = pair.tokenizer.decode
        for m, i in enumerate(todo):
            original = decode([int(target_argmax[i])] + c_orig[m])
            swapped = decode([int(drafted[i])] + c_swap[m])
            sim[i] = chrf(swapped, original) if original.strip() or swapped.strip() else float(original == swapped)
            same[i] = float(first_line(swapped) == first_line(original))
            if references[i] is not None and generated is not None:
                before = [int(t) for t in generated[i]]
                with_x = decode(before + [int(drafted[i])] + c_swap[m])
                with_a = decode(before + [int(target_argmax[i])] + c_orig[m])
                ref_gain[i] = chrf(with_x, references[i]) - chrf(with_a, references[i])
    return {"label_ll_drop": ll_drop, "label_path_drop": path_drop, "label_rollout_chrf": sim, "label_same_line": same, "label_ref_gain": ref_gain}
