"""The speculative-cascade decode loop (Narasimhan et al., Algorithm 4/5) for a batch of prompts.

Per step, for B rows in lockstep:
  1. draft K tokens with the drafter (K one-token forwards, KV-cached);
  2. score [last committed token, K drafts] with the target in ONE forward: p at K + 1 positions;
  3. build π at each drafted position with the rule;
  4. keep draft j with probability min(1, π(x_j)/q(x_j)), left to right, up to the first rejection;
  5. replace the first rejected draft by a draw from norm(max(0, π − q)), or, when all K were kept,
     add a bonus token drawn from π at position K + 1 (which needs q there: one more drafter forward);
  6. roll both caches back to the accepted prefix (rejected entries become holes or are cropped).
"""

from __future__ import annotations

import torch

from deferral.probs import sample, sampling_probs, softmax_fp32
from deferral.rules import DeferralRule, StepDistributions
from inference.acceptance import accept_drafts, residual_sample
from inference.batch import BatchState, left_pad, prefill
from inference.cached_lm import CachedLM
from inference.config import DecodeConfig, Generation


def rule_inputs(q_logits: torch.Tensor, p_logits: torch.Tensor, drafted: torch.Tensor, cfg: DecodeConfig):
    """StepDistributions for N positions from (N, V) logits of both models and (N,) drafted tokens."""
    return StepDistributions(
        q_sample=sampling_probs(q_logits, cfg.temperature, cfg.top_p),
        p_sample=sampling_probs(p_logits, cfg.temperature, cfg.top_p),
        q_conf=softmax_fp32(q_logits),
        p_conf=softmax_fp32(p_logits),
        q_logits=q_logits,
        p_logits=p_logits,
        drafted=drafted,
    )


def draw(probs: torch.Tensor, cfg: DecodeConfig, generator) -> torch.Tensor:
    """Sample (N,) tokens from (N, V) sampling probabilities; argmax at temperature 0."""
    return probs.argmax(-1) if cfg.temperature <= 0 else sample(probs, generator)


@torch.inference_mode()
def speculative_generate(
    drafter,
    target,
    rule: DeferralRule,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    vocab_size: int,
    eos_ids: set[int],
    pad_id: int,
    max_context: int,
) -> list[Generation]:
    """Decode a batch of prompts (token id lists) with a speculative cascade under `rule`."""
    state = BatchState(prompts, cfg, eos_ids, max_context)
    d_lm, t_lm = CachedLM(drafter, vocab_size), CachedLM(target, vocab_size)
    device = d_lm.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ids, valid = left_pad(prompts, pad_id, device)
    prefill(d_lm, ids, valid)
    prefill(t_lm, ids, valid)
    for row in range(len(prompts)):
        state.count(row, drafter_calls=ids.shape[1] > 1, target_calls=ids.shape[1] > 1)
    last = ids[:, -1]  # (B,) last committed token of each row
    k = cfg.draft_tokens
    [last] = state.drop([r for r in range(len(prompts)) if state.commit(r, [])], [d_lm, t_lm], last)

    while state.active:
        b = last.shape[0]
        # 1. Draft K tokens: q_logits (B, K, V), drafts (B, K).
        q_steps, draft_steps, token = [], [], last
        for _ in range(k):
            logits = d_lm.forward(token[:, None])[:, -1]
            token = draw(sampling_probs(logits, cfg.temperature, cfg.top_p), cfg, generator)
            q_steps.append(logits)
            draft_steps.append(token)
        q_logits, drafts = torch.stack(q_steps, 1), torch.stack(draft_steps, 1)

        # 2. Score the block with the target: p_logits (B, K + 1, V).
        p_logits = t_lm.forward(torch.cat([last[:, None], drafts], dim=1))

        # 3-4. π at the drafted positions and the number of kept drafts per row: n_kept (B,).
        d = rule_inputs(q_logits.flatten(0, 1), p_logits[:, :k].flatten(0, 1), drafts.flatten(), cfg)
        out = rule.target(d)
        pi = out.pi.view(b, k, -1)
        q_sample = d.q_sample.view(b, k, -1)
        n_kept = accept_drafts(pi, q_sample, drafts, generator)

        # 5. The token after the kept drafts: a residual draw at the first rejection, else a bonus.
        rows = torch.arange(b, device=device)
        at = n_kept.clamp_max(k - 1)
        next_token = residual_sample(pi[rows, at], q_sample[rows, at], generator)
        all_kept = n_kept == k
        extra_drafter_call = bool(all_kept.any())
        if extra_drafter_call:
            q_bonus = d_lm.forward(drafts[:, -1:])[:, -1]  # q at position K + 1, (B, V)
            bonus_d = rule_inputs(q_bonus, p_logits[:, k], torch.full_like(last, -1), cfg)
            bonus = draw(rule.target(bonus_d).pi, cfg, generator)
            next_token = torch.where(all_kept, bonus, next_token)

        # 6. Roll back: the target fed K + 1 tokens and keeps 1 + n_kept; the drafter fed K (+1).
        t_lm.rollback(k + 1, 1 + n_kept)
        d_lm.rollback(k + int(extra_drafter_call), 1 + n_kept)

        deferred = out.deferred.view(b, k)
        examined = torch.arange(k, device=device)[None, :] <= at[:, None]  # up to the first rejection
        finished = []
        for r in range(b):
            kept = int(n_kept[r])
            state.count(
                r,
                drafter_calls=k + int(extra_drafter_call),
                target_calls=1,
                drafted=k,
                accepted=kept,
                deferred=int((deferred[r] & examined[r]).sum()),
                examined=int(examined[r].sum()),
            )
            if state.commit(r, drafts[r, :kept].tolist() + [int(next_token[r])]):
                finished.append(r)
        [last] = state.drop(finished, [d_lm, t_lm], next_token)
    return state.results()
