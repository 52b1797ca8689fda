"""Statistical checks shared by the distribution tests: goodness of fit and a binomial rate check."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats


def chi_square_pvalue(samples: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """p-value of a chi-square goodness-of-fit test of (M,) token samples against (V,) probabilities.

    Bins whose expected count is below 5 are pooled into one bin, as the test requires.
    """
    v = expected_probs.numel()
    observed = np.bincount(samples.cpu().numpy(), minlength=v).astype(float)
    expected = expected_probs.double().cpu().numpy() * len(samples)
    small = expected < 5
    assert observed[expected == 0].sum() == 0, "a token with probability 0 was emitted"
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # remove float rounding of the total
    if len(obs) < 2:
        return 1.0
    return float(stats.chisquare(obs, exp).pvalue)


def assert_rate(hits: int, trials: int, p: float, sigmas: float = 5.0) -> None:
    """The observed rate hits/trials agrees with probability p within `sigmas` standard errors."""
    rate = hits / trials
    se = max((p * (1 - p) / trials) ** 0.5, 1.0 / trials)
    assert abs(rate - p) <= sigmas * se + 1e-6, f"rate {rate:.4f} vs expected {p:.4f} (±{sigmas}·{se:.4f})"
