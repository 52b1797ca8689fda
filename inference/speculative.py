"""The speculative-cascade decode loop (Narasimhan et al., Algorithm 4/5) for a batch of prompts.

Per step, for B rows in lockstep:
  1. draft k <= K tokens with the drafter (k one-token forwards, KV-cached; with an adaptive floor,
     drafting stops early once the drafter's confidence drops below it in every row);
  2. score [last committed token, k drafts] with the target in ONE forward: p at k + 1 positions;
  3. build π at each drafted position with the rule;
  4. keep draft j with probability min(1, π(x_j)/q(x_j)), left to right, up to the first rejection;
  5. replace the first rejected draft by a draw from norm(max(0, π − q)), or, when all k were kept,
     add a bonus token drawn from π at position k + 1 (from p with `bonus="target"`);
  6. roll both caches back to the accepted prefix (rejected entries become holes or are cropped).

Two savings keep the loop close to the cost of its forward passes:
- the bonus token's π needs q at position k + 1 only when the rule reads q there. Lossless
  speculative decoding (π = p) does not, nor does any rule with the bonus from the target, so the
  drafter skips feeding the last draft and takes it together with the bonus token (two tokens in
  one forward) at the start of the next step;
- greedy lossless speculative decoding compares argmaxes instead of building (k, V) distributions;
  greedy decoding under any keep-or-defer rule asks the rule for its decision only (`defers`), at
  the drafted positions and, on the drafter's argmax, at the bonus position: no π is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from deferral.features import Lookahead, block_lookahead, no_lookahead
from deferral.probs import sample, sampling_probs, softmax_fp32
from deferral.rules import DeferralRule, StepDistributions
from inference.acceptance import accept_drafts, residual_sample
from inference.batch import BatchState, RowQueue, join_rows, left_pad, prefill
from inference.config import DecodeConfig, Generation, TokenSpace
from inference.engines import open_lm
from inference.graphed_rule import graphed_decision
from inference.phases import NO_PHASES
from inference.stop_head import load_stop_head


def rule_inputs(
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    drafted: torch.Tensor,
    cfg: DecodeConfig,
    drafter_hidden: torch.Tensor | None = None,
    target_hidden: torch.Tensor | None = None,
    lookahead: Lookahead | None = None,
):
    """StepDistributions for N positions from (N, V) logits of both models and (N,) drafted tokens
    (plus, for rules that read them, (N, H) hidden states and the block's look-ahead)."""
    return StepDistributions(
        q_logits=q_logits,
        p_logits=p_logits,
        drafted=drafted,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        drafter_hidden=drafter_hidden,
        target_hidden=target_hidden,
        lookahead=lookahead,
    )


@dataclass
class Block:
    """One verified block as the decode loop saw it, for observers (logging); B rows, k drafts.

    rows: original prompt index of each batch row; context: each row's prompt + committed tokens
    (the drafts follow it). drafts (B, k); q_logits (B, k, V); p_logits (B, k + 1, V) from the verify
    pass; drafter_hidden (B, k, Hq) (the state that produced q at each draft) and target_hidden
    (B, k + 1, Hp) (the verify pass's states), when the observer asked for them.
    """

    rows: list[int]
    context: list[list[int]]
    drafts: torch.Tensor
    q_logits: torch.Tensor
    p_logits: torch.Tensor
    drafter_hidden: torch.Tensor | None
    target_hidden: torch.Tensor | None


Observer = Callable[[Block], None]


def draw(probs: torch.Tensor, cfg: DecodeConfig, generator) -> torch.Tensor:
    """Sample (N,) tokens from (N, V) sampling probabilities; argmax at temperature 0."""
    return probs.argmax(-1) if cfg.temperature <= 0 else sample(probs, generator)


def draw_from_logits(logits: torch.Tensor, cfg: DecodeConfig, generator) -> torch.Tensor:
    """(N, V) logits -> (N,) tokens drawn from the sampling distribution (argmax at temperature 0)."""
    if cfg.temperature <= 0:
        return logits.argmax(-1)
    return sample(sampling_probs(logits, cfg.temperature, cfg.top_p), generator)


class SpeculativeDecoder:
    """State of one batch of rows decoded by a speculative cascade; `step()` advances every row once.

    Cache invariant between steps: the target has been fed every committed token but `last`; the
    drafter every committed token but `last` and, in rows where `pending` >= 0, the token before it.
    """

    @torch.inference_mode()
    def __init__(self, drafter, target, rule, prompts, cfg, tokens: TokenSpace, observer=None, phases=None,
                 greedy_decisions: bool = True, slots: int | None = None):
        """`slots`: at most this many rows decode at once; prompts waiting in line take the rows of
        finished ones, a quarter of the rows at a time (default: every prompt is a row from the start)."""
        self.rule, self.cfg = rule, cfg
        self.phases = phases or NO_PHASES  # a PhaseTimer adds up each phase's wall time (inference/phases.py)
        self.prompts, self.observer = prompts, observer
        wanted = set(rule.hidden_needed) | set(getattr(observer, "hidden_needed", ()))
        self.drafter_hidden, self.target_hidden = "drafter" in wanted, "target" in wanted
        self.queue = RowQueue(len(prompts), slots)
        first = self.queue.first
        self.state = BatchState(prompts, cfg, tokens.eos_ids, tokens.max_context, first=first)
        lm_args = (tokens.vocab_size, cfg.engine, prompts[: len(first)], cfg.max_new_tokens, cfg.draft_tokens,
                   self.state)
        self.d_lm, self.t_lm = open_lm(drafter, *lm_args), open_lm(target, *lm_args)
        graphed = getattr(self.t_lm, "graphs", False) and rule.decides
        self.decide = graphed_decision(rule) if graphed else rule.defers  # (N,) bool: defer at each position
        self.device = self.d_lm.device
        self.pad_id = tokens.pad_id
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.lossless = rule.lossless  # π = p: the bonus token needs no q; greedy acceptance is an argmax match
        self.greedy_decisions = greedy_decisions  # False: build π even at T = 0 (the two paths are tested equal)
        self.k_now = cfg.draft_tokens  # this step's draft length (see DecodeConfig.draft_schedule)
        self.stop_head = load_stop_head(cfg.draft_stop) if cfg.draft_stop else None
        ids, valid = left_pad([prompts[i] for i in first], tokens.pad_id, self.device)
        prefill(self.d_lm, ids, valid)
        prefill(self.t_lm, ids, valid)
        for row in range(len(first)):
            self.state.count(row, drafter_calls=ids.shape[1] > 1, target_calls=ids.shape[1] > 1)
        self.last = ids[:, -1]  # (B,) last committed token of each row
        self.pending: torch.Tensor | None = None  # (B,) committed token the drafter still lacks, or -1
        self.finished = 0  # prompts done so far
        done = [r for r in range(len(first)) if self.state.commit(r, [])]
        self._drop(done)
        self._admit_waiting()

    @property
    def active(self) -> bool:
        return bool(self.state.active)

    @torch.inference_mode()
    def _admit_waiting(self) -> None:
        """Give the rows of finished prompts to waiting ones (inference.batch.RowQueue, join_rows)."""
        joining = self.queue.take(len(self.state.active))
        if not joining:
            return
        b, m = len(self.state.active), len(joining)
        last = join_rows([self.d_lm, self.t_lm], self.state, self.prompts, joining, self.pad_id, self.device,
                         counters=("drafter_calls", "target_calls"))
        self.last = torch.cat([self.last, last])
        if self.pending is not None:
            self.pending = torch.cat([self.pending, torch.full((m,), -1, dtype=self.pending.dtype, device=self.device)])
        self._drop([r for r in range(b, b + m) if self.state.commit(r, [])])

    def _drop(self, finished: list[int]) -> None:
        self.finished += len(finished)
        tensors = [self.last] if self.pending is None else [self.last, self.pending]
        kept = self.state.drop(finished, [self.d_lm, self.t_lm], *tensors)
        self.last = kept[0]
        self.pending = kept[1] if self.pending is not None else None

    def _first_drafter_input(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 1) = [last], or (B, 2) = [pending, last] with a (B, 2) validity mask."""
        if self.pending is None:
            return self.last[:, None], None
        has = self.pending >= 0
        tokens = torch.stack([torch.where(has, self.pending, self.pad_id), self.last], dim=1)
        valid = torch.stack([has.long(), torch.ones_like(self.last)], dim=1)
        return tokens, valid

    def _draft(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Draft up to k tokens: q_logits (B, k, V), drafts (B, k), and q at position k + 1 when
        adaptive drafting stopped early (the drafter has then already fed every draft). With drafter
        hidden states wanted, self.q_hidden holds (B, k, H), plus (B, 1, H) in self.q_hidden_after."""
        cfg = self.cfg
        tokens, valid = self._first_drafter_input()
        q_steps, drafts, hidden = [], [], []
        self.q_hidden = self.q_hidden_after = None
        self._block_survives = None  # (B,) stop head: P(every draft so far is kept)
        for j in range(k):
            logits = self.d_lm.forward(tokens, valid, last_only=True, want_hidden=self.drafter_hidden)[:, -1]  # (B, V)
            if self._stop_before(j, logits):
                self._keep_drafter_hidden(hidden, after=True)
                return torch.stack(q_steps, 1), torch.stack(drafts, 1), logits
            token = draw_from_logits(logits, cfg, self.generator)
            q_steps.append(logits)
            drafts.append(token)
            if self.drafter_hidden:
                hidden.append(self.d_lm.hidden[:, -1])
            tokens, valid = token[:, None], None
        self._keep_drafter_hidden(hidden, after=False)
        return torch.stack(q_steps, 1), torch.stack(drafts, 1), None

    def _stop_before(self, j: int, logits: torch.Tensor) -> bool:
        """Whether to end the block before draft j, from the drafter's logits there (B, V) alone: its
        top probability under the --draft-confidence floor, or the stop head's risk that the block
        with draft j would hold a rejected draft above --draft-stop-risk, in every row. Draft 0 is
        always made."""
        cfg = self.cfg
        if self.stop_head is not None:
            keep = self.stop_head.keep_probability(logits)  # (B,)
            self._block_survives = keep if self._block_survives is None else self._block_survives * keep
            if j > 0 and bool((1 - self._block_survives > cfg.draft_stop_risk).all()):
                return True
        floor = cfg.draft_confidence
        return floor is not None and j > 0 and bool((softmax_fp32(logits).amax(-1) < floor).all())

    def _keep_drafter_hidden(self, hidden: list[torch.Tensor], after: bool) -> None:
        if self.drafter_hidden:
            self.q_hidden = torch.stack(hidden, 1)  # (B, k, H)
            self.q_hidden_after = self.d_lm.hidden[:, -1:] if after else None

    def _observe(self, drafts: torch.Tensor, q_logits: torch.Tensor, p_logits: torch.Tensor, p_hidden) -> None:
        rows = list(self.state.active)
        context = [self.prompts[i] + self.state.tokens[i] for i in rows]
        self.observer(Block(rows, context, drafts, q_logits, p_logits, self.q_hidden, p_hidden))

    def _bonus_hidden(self, p_hidden):
        """Hidden states at the bonus position k + 1, (B, H) each, for rules that read them."""
        q_h = None
        if self.drafter_hidden:
            q_h = self.q_hidden_after[:, -1] if self.q_hidden_after is not None else self.d_lm.hidden[:, -1]
        return q_h, (p_hidden[:, -1] if p_hidden is not None else None)

    @torch.inference_mode()
    def step(self) -> None:
        # Every column this step may feed, reserved up front: a cache packed between two of the
        # step's forwards would move the columns its roll-back reads as the step's last ones.
        k = min(self.k_now, self.state.draft_room())  # K capped by the context left
        self.d_lm.reserve(k + 2)  # [pending, last], the drafts, the last draft for the bonus q
        self.t_lm.reserve(k + 1)  # [last, drafts]
        with self.phases("draft"):
            q_logits, drafts, q_after = self._draft(k)  # q_after set: the drafter has fed drafts[:, -1]

        # Score the block with the target: p_logits (B, k + 1, V) (and its hidden states (B, k + 1, H)).
        with self.phases("verify"):
            p_logits = self.t_lm.forward(torch.cat([self.last[:, None], drafts], dim=1), want_hidden=self.target_hidden)
        p_hidden = self.t_lm.hidden
        if self.observer is not None:
            self._observe(drafts, q_logits, p_logits, p_hidden)
        with self.phases("rule"):
            n_kept, next_token, deferred, fed_last, q_after = self._decide(q_logits, drafts, p_logits, p_hidden, q_after)
        with self.phases("bookkeeping"):
            self._finish_step(drafts, n_kept, next_token, deferred, fed_last)
        self._admit_waiting()

    def _decide(self, q_logits, drafts, p_logits, p_hidden, q_after):
        """The rule's decision over a verified block: (n_kept (B,), next_token (B,), deferred (B, k),
        fed_last, q_after). May feed the drafter once more (q at the bonus position)."""
        cfg, b, k = self.cfg, drafts.shape[0], drafts.shape[1]
        fed_last = q_after is not None
        rows = torch.arange(b, device=self.device)

        if self.lossless and cfg.temperature <= 0:
            # Greedy, π = p: a draft is kept iff it is the target's argmax; the next token is the
            # target's argmax after the kept prefix (correction or bonus alike).
            p_arg = p_logits.argmax(-1)  # (B, k + 1)
            n_kept = (drafts == p_arg[:, :k]).long().cumprod(-1).sum(-1)  # (B,)
            next_token = p_arg[rows, n_kept]
            deferred = torch.ones(b, k, dtype=torch.bool, device=self.device)
        else:
            rule = self.rule
            d = rule_inputs(
                q_logits.flatten(0, 1), p_logits[:, :k].flatten(0, 1), drafts.flatten(), cfg,
                drafter_hidden=self.q_hidden.flatten(0, 1) if "drafter" in rule.hidden_needed else None,
                target_hidden=p_hidden[:, :k].flatten(0, 1) if "target" in rule.hidden_needed else None,
                lookahead=block_lookahead(p_logits[:, :k], drafts) if rule.uses_lookahead else None,
            )
            if rule.decides and cfg.temperature <= 0 and self.greedy_decisions:
                # Greedy, keep-or-defer rule: π(x) is 1 where the rule keeps x or x is the target's
                # argmax and 0 elsewhere, and the residual at the first rejection is the target's
                # argmax, so only the decision is needed, not π over the vocabulary.
                deferred = self.decide(d).view(b, k)
                p_arg = p_logits[:, :k].argmax(-1)  # (B, k)
                n_kept = (~deferred | (drafts == p_arg)).long().cumprod(-1).sum(-1)  # (B,)
                next_token = p_arg[rows, n_kept.clamp_max(k - 1)]
            else:
                out = rule.target(d)
                deferred = out.deferred.view(b, k)
                pi, q_sample = out.pi.view(b, k, -1), d.q_sample.view(b, k, -1)
                n_kept = accept_drafts(pi, q_sample, drafts, self.generator)  # (B,)
                at = n_kept.clamp_max(k - 1)
                next_token = residual_sample(pi[rows, at], q_sample[rows, at], self.generator)
            all_kept = n_kept == k
            from_target = self.lossless or cfg.bonus == "target"  # the bonus needs no q
            if from_target and cfg.temperature <= 0:  # greedy: no host sync to ask whether any row needs it
                next_token = torch.where(all_kept, p_logits[:, k].argmax(-1), next_token)
            elif bool(all_kept.any()):
                if from_target:
                    bonus = draw_from_logits(p_logits[:, k], cfg, self.generator)
                else:
                    if q_after is None:  # one more drafter forward, over the last draft
                        q_after = self.d_lm.forward(drafts[:, -1:], last_only=True, want_hidden=self.drafter_hidden)[:, -1]
                        fed_last = True
                    q_h, p_h = self._bonus_hidden(p_hidden)
                    # Greedy, keep-or-defer rule: the drafter's argmax is what it would draft here, and
                    # π is one-hot on it if the rule keeps it, else on the target's argmax (as for the
                    # drafted positions above), so the decision alone gives the bonus token.
                    decided = rule.decides and cfg.temperature <= 0 and self.greedy_decisions
                    q_arg = q_after.argmax(-1)  # (B,)
                    bonus_d = rule_inputs(
                        q_after, p_logits[:, k], q_arg if decided else torch.full_like(self.last, -1), cfg,
                        drafter_hidden=q_h if "drafter" in rule.hidden_needed else None,
                        target_hidden=p_h if "target" in rule.hidden_needed else None,
                        lookahead=no_lookahead(b, self.device) if rule.uses_lookahead else None,
                    )
                    if decided:
                        bonus = torch.where(self.decide(bonus_d), p_logits[:, k].argmax(-1), q_arg)
                    else:
                        bonus = draw(self.rule.target(bonus_d).pi, cfg, self.generator)
                next_token = torch.where(all_kept, bonus, next_token)
        return n_kept, next_token, deferred, fed_last, q_after

    def _finish_step(self, drafts, n_kept, next_token, deferred, fed_last: bool) -> None:
        cfg, k = self.cfg, drafts.shape[1]
        # The step's one host sync: per row, its kept count, next token, drafts and counters.
        at = n_kept.clamp_max(k - 1)
        examined = torch.arange(k, device=self.device)[None, :] <= at[:, None]  # up to the first rejection
        table = torch.cat([n_kept[:, None], next_token[:, None], drafts, (deferred & examined).sum(-1, keepdim=True),
                           examined.sum(-1, keepdim=True)], dim=1).tolist()  # (B, k + 4) as lists
        kept = [row[0] for row in table]
        # Roll back. The target fed [last, drafts] and keeps last + the kept drafts. After its first
        # forward (which fed committed tokens only) the drafter fed drafts[:-1], plus drafts[-1] if
        # it computed q after it. The longest kept prefix, known here, moves each cursor.
        self.t_lm.rollback(k + 1, 1 + n_kept, longest=1 + max(kept))
        d_fed = k - 1 + int(fed_last)
        self.d_lm.rollback(d_fed, n_kept.clamp_max(d_fed), longest=min(max(kept), d_fed))
        self.pending = None
        if not fed_last and k in kept:  # rows that keep every draft, the last of which the drafter never fed
            self.pending = torch.where(n_kept == k, drafts[:, -1], -1)
        if cfg.draft_schedule == "heuristic":  # depends on past steps only: the output law is unchanged
            all_kept = min(kept) == k
            self.k_now = min(cfg.draft_tokens, self.k_now + 2) if all_kept else max(1, self.k_now - 1)
        self.last = next_token
        self._commit(table, k, drafter_calls=k + int(fed_last))

    def _commit(self, table: list[list[int]], k: int, drafter_calls: int) -> None:
        """Append each row's kept drafts and next token; update statistics; drop finished rows.
        table: per row [n_kept, next token, k drafts, deferred, examined] (_finish_step)."""
        finished = []
        for r, row in enumerate(table):
            n = row[0]
            self.state.count(
                r, drafter_calls=drafter_calls, target_calls=1, drafted=k, accepted=n,
                deferred=row[k + 2], examined=row[k + 3],
            )
            if self.state.commit(r, row[2 : 2 + n] + [row[1]]):
                finished.append(r)
        self._drop(finished)


@torch.inference_mode()
def speculative_generate(
    drafter,
    target,
    rule: DeferralRule,
    prompts: list[list[int]],
    cfg: DecodeConfig,
    tokens: TokenSpace,
    observer: Observer | None = None,
    phases=None,
    slots: int | None = None,
    on_finish: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Decode a batch of prompts (token id lists) with a speculative cascade under `rule`; with
    `slots`, at most that many at once, a waiting prompt taking a finished one's row (`on_finish(n)`
    hears of n prompts finishing).

    `observer(block)`, if given, sees every verified block before the rule decides (see Block); its
    optional attribute `hidden_needed` names the hidden states ("drafter", "target") it wants.
    """
    decoder = SpeculativeDecoder(
        drafter, target, rule, prompts, cfg, tokens, observer=observer, phases=phases, slots=slots
    )
    done = decoder.finished
    while decoder.active:
        decoder.step()
        if on_finish is not None and decoder.finished > done:
            on_finish(decoder.finished - done)
        done = decoder.finished
    return decoder.state.results()
