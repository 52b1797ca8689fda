"""Per-token training targets for the router, computed from both models' logits at logged positions.

All labels use the *confidence* view of the models (plain softmax at temperature 1), as the features do.
With y the reference token that actually follows and x the drafted token:
- label_mismatch    1[argmax q != argmax p]: would greedy drafting disagree with the target?
- label_accept_prob min(1, p(x)/q(x)): the lossless speculative acceptance probability of x
- label_gap01       1[argmax q != y] - 1[argmax p != y]: the 0-1 loss gap the paper's OPT rule thresholds
- label_gap_nll     -log q(y) + log p(y): the log-loss gap
- tv                D_TV(q, p): with the gap, the oracle deferral for any alpha is  gap > alpha * tv
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class LabelColumn:
    """One label column of a logged dataset (`deferral log`)."""

    name: str
    dtype: str  # numpy dtype name in the log: "int8" or "float32"
    definition: str  # written into the log's meta.json
    consequence: bool = False  # from target roll-outs in cascade logs (training/logs/consequence.py); NaN elsewhere


_COLUMNS = (
    LabelColumn("label_mismatch", "int8", "1[argmax q != argmax p] (int8)"),
    LabelColumn("label_accept_prob", "float32", "min(1, p(x)/q(x)) for the drafted token x, unscaled softmax (float32)"),
    LabelColumn("label_gap01", "float32", "1[argmax q != y] - 1[argmax p != y] for the reference token y (float32)"),
    LabelColumn("label_gap_nll", "float32", "-log q(y) + log p(y) for the reference token y (float32)"),
    LabelColumn("label_ll_drop", "float32",
                "mean per-token drop of the target's log-likelihood of its own continuation when the drafted token "
                "replaces its argmax (float32; 0 where they agree; NaN outside cascade logs)", consequence=True),
    LabelColumn("label_path_drop", "float32",
                "log-likelihood under the target of its own path (argmax + greedy roll-out) minus that of the path "
                "starting with the drafted token (drafted + its greedy roll-out), summed over 1 + horizon tokens "
                "(float32; 0 where they agree; NaN outside cascade logs)", consequence=True),
    LabelColumn("label_rollout_chrf", "float32",
                "chrF of drafted token + target roll-out against argmax + target roll-out (float32; 1 where they "
                "agree; NaN outside cascade logs)", consequence=True),
    LabelColumn("label_same_line", "float32",
                "1 where both roll-outs agree up to their first newline (float32; NaN outside cascade logs)",
                consequence=True),
    LabelColumn("label_ref_gain", "float32",
                "chrF against the document's real next lines of the text with the drafted token minus with the "
                "target's (float32; 0 where they agree; NaN without a reference or outside cascade logs)",
                consequence=True),
    LabelColumn("tv", "float32",
                "D_TV(q, p) of the unscaled distributions; oracle deferral for alpha is gap > alpha * tv (float32)"),
)
#: Every label column a log holds, in the log's column order: adding one is one entry here plus the
#: code that computes it (labels_with_features for token labels, training/logs/consequence.py for roll-outs).
LABEL_COLUMNS: dict[str, LabelColumn] = {c.name: c for c in _COLUMNS}
TOKEN_LABELS = tuple(name for name, c in LABEL_COLUMNS.items() if not c.consequence)
CONSEQUENCE_LABELS = tuple(name for name, c in LABEL_COLUMNS.items() if c.consequence)


def _same(v):
    return v


@dataclass(frozen=True)
class RouterTarget:
    """What a router learns from one label column: `harm` orients the column (higher = keeping the
    drafted token is worse), `needed` turns that into "deferral needed" (the classifier's label),
    and a regressable target may be fitted as a value (objective 'regress')."""

    name: str
    column: str
    description: str
    needed: Callable = lambda h: h > 0
    harm: Callable = _same
    regressable: bool = False

    @property
    def consequence(self) -> bool:
        return LABEL_COLUMNS[self.column].consequence


_TARGETS = (
    RouterTarget("gap01", "label_gap01", "the drafter's argmax is wrong where the target's is right", regressable=True),
    RouterTarget("gap_nll", "label_gap_nll", "the drafter's log-loss on the reference token exceeds the target's",
                 regressable=True),
    RouterTarget("mismatch", "label_mismatch", "argmax q != argmax p"),
    RouterTarget("reject", "label_accept_prob", "the drafted token's acceptance probability min(1, p/q) < 0.5",
                 needed=lambda h: h < 0.5),
    RouterTarget("harm", "label_rollout_chrf",
                 "1 - chrF of the roll-out after the drafted token against the one after the target's (regressed); "
                 "deferral needed where it exceeds 0.5", needed=lambda h: h > 0.5, harm=lambda v: 1.0 - v,
                 regressable=True),
    RouterTarget("ll_drop", "label_ll_drop",
                 "drop of the target's mean log-likelihood of its own continuation (regressed); needed above 0.5 nats",
                 needed=lambda h: h > 0.5, regressable=True),
    RouterTarget("path_drop", "label_path_drop",
                 "how much less likely (nats, summed over the drafted token and the target's roll-out after it) the "
                 "target finds the path through the drafted token than its own (regressed); needed above 1 nat",
                 needed=lambda h: h > 1.0, regressable=True),
    RouterTarget("line_change", "label_same_line", "the roll-out's first line changes", needed=lambda h: h > 0.5,
                 harm=lambda v: 1.0 - v, regressable=True),
    RouterTarget("ref_harm", "label_ref_gain",
                 "chrF against the document's real next lines lost by keeping the drafted token (regressed); "
                 "needed where positive", harm=lambda v: -v, regressable=True),
)
#: Named router targets (`--data.target`): adding one is one entry here plus its test.
ROUTER_TARGETS: dict[str, RouterTarget] = {t.name: t for t in _TARGETS}


def labels_with_features(
    features: torch.Tensor,
    names: tuple[str, ...],
    q_logits: torch.Tensor,
    p_logits: torch.Tensor,
    reference: torch.Tensor,
    drafted: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The token labels (TOKEN_LABELS) at N positions whose drafted token is the drafter's argmax.

    q_logits, p_logits: (N, V); reference: (N,) the token y that follows in the logged text; drafted:
    (N,) = argmax q. `features` (N, F) are compute_features(q_logits, p_logits, drafted[:, None])[:, 0]
    with layout `names`: TV, the acceptance probability of the drafted token and argmax agreement are
    read from them, so only the two loss gaps touch the (N, V) logits again (two logsumexp and one
    argmax instead of two full softmaxes). Returns {name: (N,)}: int8 mismatch, float32 otherwise.
    """
    col = {name: i for i, name in enumerate(names)}
    y = reference.long()[:, None]
    q32, p32 = q_logits.float(), p_logits.float()
    log_q_y = q32.gather(-1, y)[:, 0] - torch.logsumexp(q32, -1)  # (N,)
    log_p_y = p32.gather(-1, y)[:, 0] - torch.logsumexp(p32, -1)
    p_arg = p_logits.argmax(-1)
    return {
        "label_mismatch": (features[:, col["argmax_agree"]] < 0.5).to(torch.int8),
        "label_accept_prob": features[:, col["accept_prob_tok"]],
        "label_gap01": (drafted != reference).float() - (p_arg != reference).float(),
        "label_gap_nll": log_p_y - log_q_y,
        "tv": features[:, col["tv"]],
    }
