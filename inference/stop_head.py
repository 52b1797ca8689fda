"""A learned stop head for drafting (SpecDec++): from the drafter's distribution alone, the probability
that the target keeps the next draft; a block ends once the chance that it already holds a rejected
draft passes a risk level in every row.

The head is a logistic regression over the drafter-only features (`deferral.features.DRAFTER_FEATURES`:
top-4 probabilities, entropy, margin), fitted on a `deferral log` folder by `training/stop_head.py`
and stored as a small JSON file. Stopping depends on the drafter alone, so it changes a step's cost,
never the output distribution.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deferral.errors import DeferralError
from deferral.features import DRAFTER_FEATURES, drafter_statistics


@dataclass(frozen=True)
class StopHead:
    """keep probability = sigmoid(bias + Σ weight_i · (x_i - mean_i) / scale_i) over DRAFTER_FEATURES."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weight: tuple[float, ...]
    bias: float

    def keep_probability(self, q_logits: torch.Tensor) -> torch.Tensor:
        """(B, V) drafter logits at the next draft's position -> (B,) P(the target keeps that draft)."""
        x = drafter_statistics(q_logits)  # (B, F)
        mean, scale, weight = self._parameters(x.device)
        return torch.sigmoid(((x - mean) / scale) @ weight + self.bias)

    @functools.lru_cache(maxsize=4)
    def _parameters(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F,) mean, scale and weight on `device`, built once (this runs at every drafted token)."""
        return tuple(torch.tensor(v, device=device) for v in (self.mean, self.scale, self.weight))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "stop_head", **asdict(self)}, indent=2) + "\n")


@functools.lru_cache(maxsize=8)
def load_stop_head(path: str) -> StopHead:
    """A stop head from its JSON file, with one clear error for a missing, malformed or foreign file."""
    file = Path(path)
    if not file.is_file():
        raise DeferralError(f"stop head {path} does not exist: fit one with python benchmarks/fit_stop_head.py LOG --out FILE")
    try:
        raw = json.loads(file.read_text())
        head = StopHead(tuple(raw["features"]), tuple(raw["mean"]), tuple(raw["scale"]), tuple(raw["weight"]),
                        float(raw["bias"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DeferralError(f"stop head {path} is not a stop-head JSON file ({exc}): fit it again") from None
    if head.features != DRAFTER_FEATURES or not len(head.mean) == len(head.scale) == len(head.weight) == len(DRAFTER_FEATURES):
        raise DeferralError(f"stop head {path} reads {list(head.features)}, this version computes "
                            f"{list(DRAFTER_FEATURES)}: fit it again")
    return head
