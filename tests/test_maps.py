"""The map helpers on hand-worked 4x4 cases, and that explainers, SegX, metrics and writers share them."""

from importlib import import_module

import numpy as np
import pytest
import torch

from segx_monai.core import maps
from segx_monai.core.maps import minmax_normalize, per_sample_quantile, resize_maps, top_fraction_mask

from conftest import RAMP, block


def test_resize_down_averages_each_2x2_block():
    # bilinear, align_corners=False: each output pixel centre lies between 4 input pixels, e.g. (0+1+4+5)/4 = 2.5
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]])[None, None]
    torch.testing.assert_close(resize_maps(RAMP, (2, 2)), expected)


def test_resize_up_interpolates_and_clamps_at_the_border():
    # 4x4 from [[0, 4], [8, 12]]: source coordinates (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to
    # 0, 0.25, 0.75, 1; value = 4 x + 8 y
    coarse = torch.tensor([[0, 4], [8, 12]])[None, None]  # integers: resampled as floats
    expected = torch.tensor([[0.0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]])[None, None]
    torch.testing.assert_close(resize_maps(coarse, torch.tensor([4, 4])), expected)


def test_resize_keeps_maps_already_on_the_grid():
    assert resize_maps(RAMP, (4, 4)) is RAMP and resize_maps(RAMP, None) is RAMP


def test_minmax_normalize_4x4():
    # (E - min) / (max - min) per sample: RAMP - 5 spans [-5, 10] -> RAMP / 15; a constant map -> 0
    normalised = minmax_normalize(torch.cat([RAMP - 5, torch.full_like(RAMP, 3.0)]))
    torch.testing.assert_close(normalised[0], RAMP[0] / 15)
    assert torch.equal(normalised[1], torch.zeros(1, 4, 4))


def test_top_fraction_4x4():
    # q = 0.5: quantile 0.5 of 0..15 is 7.5 -> the bottom half; q = 0.25: 11.25 -> the last row
    assert per_sample_quantile(RAMP, 0.5).item() == 7.5
    assert torch.equal(top_fraction_mask(RAMP, 0.5), block(slice(2, 4), slice(None)))
    assert torch.equal(top_fraction_mask(RAMP, 0.25), block(slice(3, 4), slice(None)))


def test_top_fraction_of_a_blocky_map_keeps_its_tied_top_block():
    # 2x2 blocks of a 4x4 map (a PatchNet's): the top block is 25% of the image, so the 95% quantile is its value
    # and nothing is strictly above it; the block itself is kept, not an empty mask
    blocky = torch.tensor([[1.0, 3.0], [0.0, 2.0]]).repeat_interleave(2, dim=0).repeat_interleave(2, dim=1).view(1, 1, 4, 4)
    assert per_sample_quantile(blocky, 0.95).item() == 3.0
    assert torch.equal(top_fraction_mask(blocky, 0.05), block(slice(0, 2), slice(2, 4)))
    # below the maximum, ties at the quantile are still left out: q = 0.3, quantile 0.7 = 2 (h = 10.5 between two 2s)
    assert per_sample_quantile(blocky, 0.7).item() == 2.0
    assert torch.equal(top_fraction_mask(blocky, 0.3), block(slice(0, 2), slice(2, 4)))


def test_one_implementation_of_each_helper():
    segu, segx, base, writers, localization = map(import_module, (
        "segx_monai.core.segu", "segx_monai.core.segx", "segx_monai.explainers.base", "segx_monai.handlers.writers",
        "segx_monai.metrics.localization",
    ))
    assert base.resize_maps is writers.resize_maps is maps.resize_maps
    assert base.minmax_normalize is segu.minmax_normalize is localization.minmax_normalize is maps.minmax_normalize
    assert segx.top_fraction_mask is segu.top_fraction_mask is maps.top_fraction_mask


@pytest.mark.parametrize("p", [0.0, 0.01, 0.3, 0.5, 0.51, 0.95, 0.999, 1.0])
def test_per_sample_quantile_is_numpys_linear_quantile_on_either_tail(p):
    """Both order statistics come from the shorter tail's partial sort; numpy's "linear" quantile is the reference."""
    maps = torch.rand(3, 1, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    maps[0, 0, 0, :4] = 0.5  # ties
    expected = np.quantile(maps.flatten(1).numpy(), p, axis=1)
    assert per_sample_quantile(maps, p).numpy() == pytest.approx(expected, abs=1e-12)
    single = torch.full((1, 1, 1, 1), 0.25)
    assert per_sample_quantile(single, p).item() == 0.25
