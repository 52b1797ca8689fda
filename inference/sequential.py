"""The sequential token-level cascade (paper Algorithms 2-3): the drafter runs every token and the
target is called only where the rule defers (or, for rules whose decision needs p, at every token,
the paper's "oracle" execution). Each emitted token is drawn from the same π the speculative loop
targets, so the two differ in cost, not in distribution.

Rows are decoded one at a time: each row calls the target at its own positions, so batching them in
lockstep would only add padding.
"""

from __future__ import annotations

import torch

from deferral.errors import DeferralError
from deferral.rules import DeferralRule
from inference.acceptance import accept_drafts, residual_sample
from inference.batch import BatchState, left_pad, prefill
from inference.config import DecodeConfig, Generation, TokenSpace
from inference.engines import open_lm
from inference.speculative import draw, rule_inputs


@torch.inference_mode()
def sequential_generate(
    drafter,
    target,
    rule: DeferralRule,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    tokens: TokenSpace,
) -> list[Generation]:
    if rule.uses_lookahead or rule.hidden_needed:
        needs = "look-ahead over a drafted block" if rule.uses_lookahead else "hidden states"
        raise DeferralError(
            f"rule {rule!r} reads {needs}, which the sequential cascade does not compute: drop --sequential"
        )
    results = []
    for i, prompt in enumerate(prompts):
        row_cfg = DecodeConfig(**{**cfg.__dict__, "seed": cfg.seed + i})
        results.append(
            _one_row(drafter, target, rule, prompt, row_cfg, tokens)
        )
    return results


def _one_row(drafter, target, rule, prompt, cfg, tokens: TokenSpace) -> Generation:
    state = BatchState([prompt], cfg, tokens.eos_ids, tokens.max_context)
    lm_args = (tokens.vocab_size, cfg.engine, [prompt], cfg.max_new_tokens, cfg.draft_tokens, state)
    d_lm, t_lm = open_lm(drafter, *lm_args), open_lm(target, *lm_args)
    generator = torch.Generator(device=d_lm.device).manual_seed(cfg.seed)
    ids, valid = left_pad([prompt], tokens.pad_id, d_lm.device)
    prefill(d_lm, ids, valid)
    state.count(0, drafter_calls=ids.shape[1] > 1)
    # Committed tokens the target has not been fed yet; it catches up in one forward when called.
    pending = ids  # (1, n)
    last = ids[:, -1]
    done = state.commit(0, [])
    while not done:
        q_logits = d_lm.forward(last[:, None])[:, -1]  # (1, V)
        q_only = rule_inputs(q_logits, q_logits, last, cfg)
        drafted = draw(q_only.q_sample, cfg, generator)  # (1,)
        q_only.drafted = drafted
        # Rules that decide from q alone see p as a placeholder they never read.
        call_target = rule.needs_target or bool(rule.target(q_only).deferred[0])
        if call_target:
            p_logits = t_lm.forward(pending)[:, -1]
            state.count(0, target_calls=1)
            d = rule_inputs(q_logits, p_logits, drafted, cfg)
            out = rule.target(d)
            # One-token speculative acceptance: the emitted token is distributed exactly as π.
            kept = accept_drafts(out.pi[:, None], d.q_sample[:, None], drafted[:, None], generator)
            token = drafted if int(kept[0]) == 1 else residual_sample(out.pi, d.q_sample, generator)
            deferred = bool(out.deferred[0])
            pending = token[:, None]
        else:
            token, deferred = drafted, False
            pending = torch.cat([pending, token[:, None]], dim=1)
        state.count(
            0, drafter_calls=1, drafted=1, accepted=int(token[0] == drafted[0]), deferred=deferred, examined=1
        )
        done = state.commit(0, [int(token[0])])
        last = token
    return state.results()[0]
