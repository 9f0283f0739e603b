"""SegX: quantile, top-fraction mask, normalisation, dilation and both SegX variants on hand-worked 4x4 cases."""

import pytest
import torch

from segx_monai.core import dilate_disk, minmax_normalize, per_sample_quantile, segx, top_fraction_mask

# E = arange(16) as a 4x4 image:
#  0  1  2  3
#  4  5  6  7
#  8  9 10 11
# 12 13 14 15
RAMP = torch.arange(16.0).view(1, 1, 4, 4)
LEFT_HALF_PROBS = torch.tensor([[0.9, 0.9, 0.1, 0.1]] * 4)[None, None]  # M = columns 0 and 1


def pixels(*coords, shape=(4, 4)):
    """Boolean (1, 1, *shape) image with True at the given (row, col) coordinates."""
    image = torch.zeros(1, 1, *shape, dtype=torch.bool)
    for coord in coords:
        image[(0, 0, *coord)] = True
    return image


def test_quantile_is_numpy_linear():
    # n = 16 sorted values 0..15; p = 0.95: h = 15 * 0.95 = 14.25 -> x14 + 0.25 (x15 - x14) = 14.25
    assert per_sample_quantile(RAMP, 0.95).item() == pytest.approx(14.25)
    # 14 zeros, then 2 and 10; p = 0.9: h = 13.5 -> x13 + 0.5 (x14 - x13) = 0 + 0.5 * 2 = 1
    sparse = torch.zeros(1, 1, 4, 4)
    sparse[0, 0, 0, 0], sparse[0, 0, 3, 3] = 2.0, 10.0
    assert per_sample_quantile(sparse, 0.9).item() == pytest.approx(1.0)


def test_quantile_matches_torch_quantile_per_sample():
    maps = torch.rand(3, 1, 7, 5, generator=torch.Generator().manual_seed(0))
    for p in (0.0, 0.13, 0.5, 0.95, 1.0):
        expected = torch.quantile(maps.flatten(1), p, dim=1, interpolation="linear")
        torch.testing.assert_close(per_sample_quantile(maps, p), expected)


def test_quantile_beyond_torch_quantile_size_limit():
    # 4097**2 > 2**24 elements, which torch.quantile refuses; values 0..N-1 have quantile (N - 1) p
    n_pixels = 4097 * 4097
    ramp = torch.arange(n_pixels, dtype=torch.float64).view(1, 1, 1, 4097, 4097)
    assert per_sample_quantile(ramp, 0.95).item() == pytest.approx((n_pixels - 1) * 0.95)


def test_top_fraction_mask():
    # q = 0.25: h = 15 * 0.75 = 11.25 -> threshold 11.25 -> values 12..15, the last row
    assert torch.equal(top_fraction_mask(RAMP, q=0.25), pixels((3, 0), (3, 1), (3, 2), (3, 3)))
    # q = 0.05: threshold 14.25 -> only 15
    assert torch.equal(top_fraction_mask(RAMP), pixels((3, 3)))


def test_top_fraction_mask_of_constant_and_zero_maps_is_empty():
    # every value equals the quantile and the comparison is strict
    flat = torch.stack([torch.full((1, 4, 4), 3.0), torch.zeros(1, 4, 4)])
    assert not top_fraction_mask(flat).any()


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_top_fraction_mask_rejects_q_outside_open_interval(q):
    with pytest.raises(ValueError, match="q must lie in"):
        top_fraction_mask(RAMP, q)


def test_minmax_normalize_per_sample_and_constant_to_zero():
    maps = torch.stack([RAMP[0] + 2, torch.full((1, 4, 4), 7.0)])
    normalised = minmax_normalize(maps)
    torch.testing.assert_close(normalised[0], RAMP[0] / 15)  # (E - 2) / (17 - 2)
    assert torch.equal(normalised[1], torch.zeros(1, 4, 4))


def test_dilate_disk_2d():
    centre = pixels((2, 2), shape=(5, 5))
    plus = pixels((1, 2), (2, 1), (2, 2), (2, 3), (3, 2), shape=(5, 5))  # radius 1: 4-neighbours, not a 3x3 square
    assert torch.equal(dilate_disk(centre, 1), plus)
    # radius 2: offsets with dy² + dx² <= 4 are the 25 of the 5x5 square minus the 12 with |dy|+|dx| >= 3
    assert dilate_disk(centre, 2).sum().item() == 13
    assert torch.equal(dilate_disk(centre, 0), centre)


def test_dilate_disk_3d_ball():
    voxel = torch.zeros(1, 1, 3, 3, 3, dtype=torch.bool)
    voxel[0, 0, 1, 1, 1] = True
    assert dilate_disk(voxel, 1).sum().item() == 7  # centre and its 6 face neighbours


def test_rethreshold():
    # masked = E on columns 0-1: nonzero 1,4,5,8,9,12,13 and 9 zeros; sorted x11 = 5, x12 = 8
    # q = 0.25: h = 11.25 -> threshold 5 + 0.25 * 3 = 5.75 -> values 8, 9, 12, 13
    result = segx(RAMP, LEFT_HALF_PROBS, variant="rethreshold", q=0.25)
    assert torch.equal(result.mask, LEFT_HALF_PROBS > 0.5)
    assert torch.equal(result.heatmap, RAMP * (LEFT_HALF_PROBS > 0.5))
    assert torch.equal(result.binary, pixels((2, 0), (2, 1), (3, 0), (3, 1)))
    assert not result.empty_mask.any()


def test_intersect():
    # top 25% of the raw map is the last row; intersected with columns 0-1
    result = segx(RAMP, LEFT_HALF_PROBS, variant="intersect", q=0.25)
    assert torch.equal(result.binary, pixels((3, 0), (3, 1)))
    assert torch.equal(result.heatmap, RAMP * (LEFT_HALF_PROBS > 0.5))


def test_fewer_than_q_nonzero_pixels():
    # E = arange(16) + 1 (no zeros); M = (0,0), (1,1), (3,3) with E = 1, 6, 16: 3 non-zero pixels < q N = 4
    probs = pixels((0, 0), (1, 1), (3, 3)).float()
    # rethreshold: 13 zeros then 1, 6, 16; x11 = x12 = 0 -> threshold 0 -> every non-zero pixel
    assert torch.equal(segx(RAMP + 1, probs, q=0.25).binary, probs.bool())
    # intersect: raw top 25% is the last row, of which only (3,3) is in M
    assert torch.equal(segx(RAMP + 1, probs, variant="intersect", q=0.25).binary, pixels((3, 3)))


def test_dilation_grows_mask_before_masking():
    probs = pixels((1, 1)).float() * 0.9
    result = segx(RAMP, probs, q=0.25, dilation=1)
    plus = pixels((0, 1), (1, 0), (1, 1), (1, 2), (2, 1))
    assert torch.equal(result.mask, plus)
    assert result.heatmap.sum().item() == 1 + 4 + 5 + 6 + 9


def test_soft_mask():
    # p = 0.6 on columns 0-1, 0.4 on columns 2-3 (M = columns 0-1); heatmap = E * p:
    #   col0: 0 2.4 4.8 7.2 | col1: .6 3 5.4 7.8 | col2: .8 2.4 4 5.6 | col3: 1.2 2.8 4.4 6
    # sorted: 0 .6 .8 1.2 2.4 2.4 2.8 3 4 4.4 4.8 5.4 5.6 6 7.2 7.8; x11 = 5.4, x12 = 5.6 -> threshold 5.45
    probs = torch.tensor([[0.6, 0.6, 0.4, 0.4]] * 4)[None, None]
    result = segx(RAMP, probs, q=0.25, soft_mask=True)
    torch.testing.assert_close(result.heatmap, RAMP * probs)
    assert torch.equal(result.binary, pixels((3, 0), (3, 1), (3, 2), (3, 3)))  # the hard mask gave (2..3, 0..1)
    intersect = segx(RAMP, probs, variant="intersect", q=0.25, soft_mask=True)
    assert torch.equal(intersect.binary, pixels((3, 0), (3, 1)))


@pytest.mark.parametrize("variant", ["rethreshold", "intersect"])
def test_empty_mask_falls_back_to_raw_map(variant):
    maps = torch.cat([RAMP, RAMP])
    probs = torch.cat([torch.full_like(LEFT_HALF_PROBS, 0.1), LEFT_HALF_PROBS])
    result = segx(maps, probs, variant=variant, q=0.25)
    assert result.empty_mask.tolist() == [True, False]
    assert torch.equal(result.heatmap[0], RAMP[0])
    assert torch.equal(result.binary[0], top_fraction_mask(RAMP, 0.25)[0])
    assert torch.equal(result.heatmap[1], (RAMP * (LEFT_HALF_PROBS > 0.5))[0])


@pytest.mark.parametrize("variant", ["rethreshold", "intersect"])
def test_constant_and_zero_maps(variant):
    # constant 3 on M = columns 0-1: masked = 8 zeros and 8 threes; x11 = x12 = 3 -> nothing above 3
    maps = torch.stack([torch.full((1, 4, 4), 3.0), torch.zeros(1, 4, 4)])
    result = segx(maps, torch.cat([LEFT_HALF_PROBS] * 2), variant=variant, q=0.25)
    assert torch.isfinite(result.heatmap).all()
    assert not result.binary.any()


def test_map_resampled_to_mask_size():
    # 2x2 -> 4x4 bilinear, align_corners=False: source x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25,
    # clamped to 0, 0.25, 0.75, 1 -> a row [0, 4] becomes [0, 1, 3, 4]
    coarse = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    result = segx(coarse, LEFT_HALF_PROBS)
    assert result.heatmap.shape == result.mask.shape == (1, 1, 4, 4)
    assert torch.equal(result.heatmap, torch.tensor([[0.0, 1.0, 0.0, 0.0]] * 4)[None, None])


def test_3d_volume():
    # E = arange(64) as 4x4x4, M = slice z = 0 (values 0..15); q = 0.05, n = 64: h = 63 * 0.95 = 59.85
    volume = torch.arange(64.0).view(1, 1, 4, 4, 4)
    probs = torch.zeros(1, 1, 4, 4, 4)
    probs[:, :, 0] = 1.0
    # rethreshold: 49 zeros then 1..15, x59 = 11, x60 = 12 -> threshold 11.85 -> values 12..15 (z = 0, last row)
    binary = segx(volume, probs).binary
    assert binary.sum().item() == 4 and binary[0, 0, 0, 3].all()
    # intersect: raw threshold 59.85 -> values 60..63 lie in z = 3, outside M
    assert not segx(volume, probs, variant="intersect").binary.any()


@pytest.mark.parametrize("variant", ["rethreshold", "intersect"])
def test_batched_equals_per_sample(variant):
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 1, 8, 6, generator=generator)
    probs = torch.rand(3, 1, 16, 12, generator=generator)
    probs[2] = 0.0  # one sample falls back to its raw map
    batched = segx(maps, probs, variant=variant, dilation=1, soft_mask=True)
    for i in range(3):
        single = segx(maps[i : i + 1], probs[i : i + 1], variant=variant, dilation=1, soft_mask=True)
        for batched_field, single_field in zip(batched, single):
            torch.testing.assert_close(batched_field[i : i + 1], single_field)


@pytest.mark.parametrize(
    "maps, probs, kwargs, message",
    [
        (RAMP[0], LEFT_HALF_PROBS, {}, "must be a"),
        (RAMP.expand(1, 2, 4, 4), LEFT_HALF_PROBS, {}, "must be a"),
        (torch.cat([RAMP, RAMP]), LEFT_HALF_PROBS, {}, "same batch size"),
        (RAMP, LEFT_HALF_PROBS, {"q": 1.0}, "q must lie in"),
        (RAMP, LEFT_HALF_PROBS, {"variant": "union"}, "intersect"),
        (RAMP, LEFT_HALF_PROBS, {"dilation": -1}, "radius"),
    ],
)
def test_invalid_inputs(maps, probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segx(maps, probs, **kwargs)
