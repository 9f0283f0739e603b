"""Tests of COIN's networks and training losses: the generator's range and start, the target posterior, the KL
consistency, total variation and the difference map, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from segx_monai.metrics.counterfactual import (
    consistency_kl, difference_map, is_target, target_posterior, total_variation,
)
from segx_monai.networks.counterfactual import build_discriminator, build_generator

TINY = (4, 4, 4, 4, 4, 4)


def test_generator_starts_as_identity_and_stays_in_range():
    x = torch.linspace(-3, 3, 2 * 32 * 32).view(1, 2, 32, 32).repeat(2, 1, 1, 1)
    generator = build_generator(2, 3, low=[-2.0, -1.0], high=[2.0, 1.0], features=TINY)
    condition = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    clamped = torch.stack([x[:, 0].clamp(-2, 2), x[:, 1].clamp(-1, 1)], dim=1)
    assert torch.equal(generator(x, condition), clamped)  # zero last layer: X_cf = X, within each channel's range
    torch.nn.init.normal_(generator.unet.final_conv.weight, std=10.0)
    out = generator(x, condition)
    assert out[:, 0].amin() >= -2 and out[:, 0].amax() <= 2 and out[:, 1].amin() >= -1 and out[:, 1].amax() <= 1
    assert not torch.equal(out[0], generator(x, condition.flip(0))[0])  # the condition changes the counterfactual
    with pytest.raises(ValueError, match=r"condition must have shape \(2, 3\)"):
        generator(x, torch.zeros(2, 4))


def test_discriminator_scores_patches():
    logits = build_discriminator(3, channels=8)(torch.randn(2, 3, 64, 64))[-1]
    assert logits.shape[:2] == (2, 1) and logits.shape[2] > 1  # one logit per receptive field


def test_target_posterior_and_is_target():
    assert torch.equal(target_posterior(["a", "b"], "normal", multi_label=True), torch.zeros(2))
    assert torch.equal(target_posterior(["nv", "mel", "bcc"], "mel", multi_label=False), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="counterfactual_target 'nv'.*'normal'"):
        target_posterior(["a", "b"], "nv", multi_label=True)
    with pytest.raises(ValueError, match=r"counterfactual_target 'xx'.*\['nv', 'mel'\]"):
        target_posterior(["nv", "mel"], "xx", multi_label=False)
    assert is_target(torch.tensor([[0, 0], [1, 0], [0, 1]]), torch.zeros(2)).tolist() == [True, False, False]
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    assert is_target(torch.tensor([1, 0, 1]), one_hot).tolist() == [True, False, True]  # class indices
    assert is_target(torch.tensor([[1], [2]]), one_hot).tolist() == [True, False]
    assert is_target(torch.tensor([[0, 1, 0], [1, 0, 0]]), one_hot).tolist() == [True, False]  # one-hot labels


def test_consistency_kl_by_hand():
    # multi-label, target "no finding": KL(0 || p) = -log(1 - p) per finding, summed, mean over the batch
    logits = torch.tensor([[0.0, math.log(3.0)], [-math.log(3.0), 0.0]])  # p = 1/2, 3/4 and 1/4, 1/2
    expected = (-math.log(0.5) - math.log(0.25) - math.log(0.75) - math.log(0.5)) / 2
    assert consistency_kl(logits, torch.zeros(2), multi_label=True).item() == pytest.approx(expected, rel=1e-6)
    # a soft multi-label target: t log(t/p) + (1-t) log((1-t)/(1-p)) with t = 1/2, p = 3/4
    soft = consistency_kl(torch.tensor([[math.log(3.0)]]), torch.tensor([0.5]), multi_label=True)
    assert soft.item() == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-6)
    # single-label: KL(one-hot || softmax) = -log p_target
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    assert consistency_kl(logits, torch.tensor([0.0, 0.0, 1.0]), multi_label=False).item() == pytest.approx(-math.log(0.5), rel=1e-6)
    assert consistency_kl(torch.tensor([[20.0, -20.0]]), torch.tensor([1.0, 0.0]), multi_label=False).item() == pytest.approx(0, abs=1e-6)


def test_total_variation_and_difference_map_by_hand():
    image = torch.tensor([[0.0, 1.0], [3.0, 1.0]]).view(1, 1, 2, 2)
    # vertical |3-0| + |1-1|, horizontal |1-0| + |1-3|: 6; two samples, the second constant: mean 3
    assert total_variation(torch.cat([image, torch.ones_like(image)])).item() == 3.0
    x = torch.zeros(1, 2, 2, 2)
    cf = torch.tensor([[[[1.0, -2.0], [0.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]]])
    # channel 0 at std 0.5: 0.5, 1, 0, 2; channel 1 at std 0.25: 0.5, 0, 0, 0; mean of the two
    expected = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])
    torch.testing.assert_close(difference_map(x, cf, [0.5, 0.25]), expected)
    assert difference_map(x, cf).shape == (1, 1, 2, 2)
