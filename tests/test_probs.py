"""Sampling and confidence distributions built from logits."""

from __future__ import annotations

import torch

from deferral.probs import sample, sampling_probs, softmax_fp32, top_p_filter, total_variation


def test_temperature_zero_is_one_hot_on_the_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 1.0, 0.0]])
    probs = sampling_probs(logits, temperature=0.0)
    assert torch.equal(probs, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_temperature_scales_before_softmax_in_float32():
    logits = torch.randn(4, 10, dtype=torch.bfloat16)
    probs = sampling_probs(logits, temperature=0.5)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(logits.float() / 0.5, -1))
    torch.testing.assert_close(softmax_fp32(logits), torch.softmax(logits.float(), -1))


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    torch.testing.assert_close(top_p_filter(probs, 0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(top_p_filter(probs, 0.5), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(top_p_filter(probs, 0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))  # top token stays
    torch.testing.assert_close(top_p_filter(probs, 1.0), probs)
    logits = probs.log()
    torch.testing.assert_close(sampling_probs(logits, 1.0, top_p=0.7), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))


def test_total_variation():
    a = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(total_variation(a, b), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(total_variation(a, b), total_variation(b, a))


def test_sample_respects_zero_probabilities_and_seeds():
    probs = torch.tensor([[0.0, 0.7, 0.3]]).expand(2000, 3)
    draws = sample(probs, torch.Generator().manual_seed(0))
    assert draws.shape == (2000,) and (draws != 0).all()
    assert abs(float((draws == 1).float().mean()) - 0.7) < 0.05
    assert torch.equal(draws, sample(probs, torch.Generator().manual_seed(0)))
