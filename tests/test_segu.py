"""SegU: IoU helpers, cIoU and cAUITC, and the size-aware precision, relevance mass and rank accuracy on hand-worked
4x4 cases, empty masks, flat maps, devices."""

import pytest
import torch

from segx_monai.core import (
    compute_cauitc,
    compute_ciou,
    compute_cprecision,
    compute_crank_accuracy,
    compute_crelevance_mass,
    iou,
    minmax_normalize,
    relevance_mass,
    segx,
    threshold_curve_area,
    threshold_curve_iou,
)
from segx_monai.metrics import (
    compute_auitc,
    compute_hit,
    compute_iou_at_q,
    compute_relevance_mass,
    correctness_auroc,
    mean_by_correctness,
    risk_coverage_curve,
)

from conftest import EMPTY, RAMP, block


TOP_LEFT_2X2 = block(slice(0, 2), slice(0, 2))
TOP_LEFT_2X3 = block(slice(0, 2), slice(0, 3))


def test_iou():
    # |A ∩ B| = 4, |A ∪ B| = 6
    assert iou(TOP_LEFT_2X2, TOP_LEFT_2X3).item() == pytest.approx(4 / 6)
    assert iou(TOP_LEFT_2X2, EMPTY).isnan().all() and iou(EMPTY, EMPTY).isnan().all()


def test_threshold_curve_iou_matches_one_threshold_at_a_time():
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 1, 6, 5, generator=generator).round(decimals=1)  # ties included
    masks = torch.rand(3, 1, 6, 5, generator=generator) > 0.6
    masks[1] = False
    thresholds = torch.tensor([0.0, 0.1, 0.35, 0.5, 0.9, 1.0])
    expected = torch.stack([iou(maps >= t, masks) for t in thresholds], dim=1)
    torch.testing.assert_close(threshold_curve_iou(maps, masks, thresholds), expected, equal_nan=True)


def test_ciou():
    # q = 0.25: top of arange(16) is the last row; M = bottom-right 2x2: |∩| = 2, |∪| = 4 + 4 - 2 = 6
    mask = block(slice(2, 4), slice(2, 4))
    assert compute_ciou(RAMP, mask, q=0.25).item() == pytest.approx(1 / 3)


def test_ciou_is_zero_for_empty_mask_or_flat_map():
    maps = torch.cat([RAMP, torch.full_like(RAMP, 5.0), torch.zeros_like(RAMP), torch.zeros_like(RAMP)])
    masks = torch.cat([EMPTY, TOP_LEFT_2X2, TOP_LEFT_2X2, EMPTY])
    # non-empty top vs empty M; empty top (flat map) vs M twice; both empty
    assert compute_ciou(maps, masks).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_ciou_resamples_map_to_mask():
    # 2x2 [[0, 4], [0, 4]] -> 4x4 rows [0, 1, 3, 4]; q = 0.25: four each of 0, 1, 3, 4, x11 = 3, x12 = 4
    # -> threshold 3.25 -> column 3, equal to M
    coarse = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    assert compute_ciou(coarse, block(slice(None), slice(3, 4)), q=0.25).item() == pytest.approx(1.0)


def test_cauitc_three_point_grid():
    # binary map E = top-left 2x2, M = top-left 2x3; grid t = 0, 0.5, 1
    # t = 0 selects all 16 pixels: IoU = 6/16; t = 0.5 and 1 select E: IoU = 4/6
    # trapezoid: 0.5 (6/16 + 4/6) / 2 + 0.5 (4/6 + 4/6) / 2 = 0.25 * 0.375 + 0.75 * 2/3 = 0.59375
    score = compute_cauitc(TOP_LEFT_2X2.float(), TOP_LEFT_2X3, n_thresholds=3)
    assert score.item() == pytest.approx(0.59375)


def test_cauitc_101_point_grid():
    # E = 2 at (0,0),(0,1); 0.51 at (1,0),(1,1); 0 elsewhere -> E_n = 1, 0.255, 0
    # M = (0,0),(1,0),(1,1),(2,0)
    # t = 0: all pixels, IoU = 4/16 = 0.25
    # t = 0.01..0.25 (25 points): 4 pixels, |∩| = 3, |∪| = 5 -> 0.6
    # t = 0.26..1.00 (75 points): 2 pixels, |∩| = 1, |∪| = 5 -> 0.2
    # 0.01 * [(0.25 + 0.6)/2 + 24 * 0.6 + (0.6 + 0.2)/2 + 74 * 0.2] = 0.01 * 30.025
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, :2] = 2.0
    maps[0, 0, 1, :2] = 0.51
    mask = block(slice(1, 2), slice(0, 2)) | block(slice(0, 3), slice(0, 1))
    assert compute_cauitc(maps, mask).item() == pytest.approx(0.30025)


def test_cauitc_flat_map_and_empty_mask():
    # flat map: E_n = 0, only t = 0 selects pixels (IoU 4/16) -> 0.01 * (0.25 + 0) / 2 = 0.00125
    maps = torch.cat([torch.full_like(RAMP, 5.0), torch.zeros_like(RAMP), RAMP])
    masks = torch.cat([TOP_LEFT_2X2, TOP_LEFT_2X2, EMPTY])
    torch.testing.assert_close(compute_cauitc(maps, masks), torch.tensor([0.00125, 0.00125, 0.0]))


def test_size_aware_scores():
    # RAMP, q = 0.25: the top 25% (values above 11.25) is the last row, 12..15; total mass 0 + ... + 15 = 120
    # M = bottom-right 2x2 (10, 11, 14, 15): precision |{14, 15}| / 4 = 0.5; mass (10 + 11 + 14 + 15) / 120 = 50 / 120;
    #     rank: the 4 highest (12..15) hold 14, 15 -> 2 / 4 = 0.5
    # M = bottom-right 3x3 (5, 6, 7, 9, 10, 11, 13, 14, 15): precision |{13, 14, 15}| / 4 = 0.75; mass 90 / 120 = 0.75;
    #     rank: the 9 highest (7..15) hold 7, 9, 10, 11, 13, 14, 15 -> 7 / 9
    maps = torch.cat([RAMP, RAMP])
    masks = torch.cat([block(slice(2, 4), slice(2, 4)), block(slice(1, 4), slice(1, 4))])
    torch.testing.assert_close(compute_cprecision(maps, masks, q=0.25), torch.tensor([0.5, 0.75]))
    torch.testing.assert_close(compute_crelevance_mass(maps, masks), torch.tensor([50 / 120, 0.75]))
    torch.testing.assert_close(compute_crank_accuracy(maps, masks), torch.tensor([0.5, 7 / 9]))


def test_size_aware_scores_ties_flat_maps_and_empty_masks():
    # 1: map 1 on the top-left 2x2, 0 elsewhere; M = that 2x2 and (2, 0), |M| = 5. Rank: the 6th highest value is 0, so
    #    the tied zeros are left out and only the four 1s count: 4 / 5. Precision (q = 0.25): quantile 0.75 = 0.25, the
    #    top set is the four 1s, all in M: 1. Mass 4 / 4 = 1.
    # 2: flat map 5, M = top-left 2x2: no top set (precision 0), mass 4 * 5 / (16 * 5) = 0.25, nothing above the 5th
    #    highest value (rank 0).  3: all-zero map: every score undefined -> 0.  4: empty M: 0, as for cIoU.
    tied = TOP_LEFT_2X2.float()
    maps = torch.cat([tied, torch.full_like(RAMP, 5.0), torch.zeros_like(RAMP), RAMP])
    masks = torch.cat([TOP_LEFT_2X2 | block(slice(2, 3), slice(0, 1)), TOP_LEFT_2X2, TOP_LEFT_2X2, EMPTY])
    assert compute_crank_accuracy(maps, masks).tolist() == pytest.approx([0.8, 0, 0, 0])
    assert compute_cprecision(maps, masks, q=0.25).tolist() == [1, 0, 0, 0]
    assert compute_crelevance_mass(maps, masks).tolist() == [1, 0.25, 0, 0]


def test_relevance_mass_counts_positive_relevance_only():
    # RAMP - 8 = -8..7: positive relevance 1..7 (total 28); M = last row (4, 5, 6, 7): 22 / 28; zero map, empty M: NaN
    maps = torch.cat([RAMP - 8, torch.zeros_like(RAMP), RAMP])
    scores = relevance_mass(maps, torch.cat([block(slice(3, 4), slice(None)), TOP_LEFT_2X2, EMPTY]))
    assert scores[0].item() == pytest.approx(22 / 28) and scores[1:].isnan().all()


def test_size_aware_scores_are_not_capped_by_region_size():
    # M = rows 1-3, 75% of the image; q = 0.25 keeps 4 pixels, so cIoU <= 4 / 12 = q / 0.75 whatever the map.
    # RAMP's top 25% (last row) lies entirely inside M: cIoU = 4 / 12 at its cap, precision and rank accuracy 1,
    # mass (4 + ... + 15) / 120 = 0.95
    region = block(slice(1, 4), slice(None))
    assert compute_ciou(RAMP, region, q=0.25).item() == pytest.approx(0.25 / 0.75)
    assert compute_cprecision(RAMP, region, q=0.25).item() == 1.0
    assert compute_crank_accuracy(RAMP, region).item() == 1.0
    assert compute_crelevance_mass(RAMP, region).item() == pytest.approx(0.95)
    maps = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    assert (compute_ciou(maps, region.expand(64, 1, 4, 4), q=0.25) <= 0.25 / 0.75 + 1e-6).all()


def test_threshold_curve_area_rejects_single_threshold():
    with pytest.raises(ValueError, match="n_thresholds"):
        threshold_curve_area(RAMP, TOP_LEFT_2X2, n_thresholds=1)


@pytest.mark.parametrize(
    "score_fn", [compute_ciou, compute_cauitc, compute_cprecision, compute_crelevance_mass, compute_crank_accuracy]
)
def test_batched_equals_per_sample(score_fn):
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(4, 1, 5, 7, generator=generator)
    masks = torch.rand(4, 1, 10, 14, generator=generator) > 0.5
    masks[3] = False
    batched = score_fn(maps, masks)
    single = torch.cat([score_fn(maps[i : i + 1], masks[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single)


def test_3d_volume():
    # q = 0.05 of arange(64): threshold 59.85 -> voxels 60..63 (z = 3, last row); M = slice z = 3: |∩| = 4, |∪| = 16
    volume = torch.arange(64.0).view(1, 1, 4, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool)
    mask[:, :, 3] = True
    assert compute_ciou(volume, mask).item() == pytest.approx(4 / 16)
    # E_n = v / 63, grid t = 0, 0.5, 1: all 64 voxels (IoU 16/64), v >= 31.5 (32 voxels, IoU 16/32), v = 63 (1/16)
    # trapezoid: 0.25 * 0.25 + 0.5 * 0.5 + 0.25 * 1/16 = 0.328125
    assert compute_cauitc(volume, mask, n_thresholds=3).item() == pytest.approx(0.328125)


@pytest.fixture
def meta_default_device():
    """Make tensors created without an explicit device land on "meta", exposing any that ignore the inputs' device."""
    torch.set_default_device("meta")
    yield
    torch.set_default_device(None)


def test_outputs_stay_on_input_device(meta_default_device):
    cpu = torch.device("cpu")
    maps = torch.rand(2, 1, 4, 4, device=cpu)
    probs = torch.rand(2, 1, 8, 8, device=cpu)
    masks = probs > 0.5
    scores, correct = torch.tensor([0.3, 0.2, 0.5], device=cpu), torch.tensor([1, 0, 1], device=cpu)
    outputs = [
        *segx(maps, probs, dilation=1),
        *segx(maps, probs, variant="intersect", soft_mask=True),
        minmax_normalize(maps),
        compute_ciou(maps, masks),
        compute_cauitc(maps, masks),
        compute_cprecision(maps, masks),
        compute_crelevance_mass(maps, masks),
        compute_crank_accuracy(maps, masks),
        compute_iou_at_q(maps, masks),
        compute_auitc(maps, masks),
        compute_hit(maps, masks),
        compute_relevance_mass(maps, masks),
        *mean_by_correctness(scores, correct),
        correctness_auroc(scores, correct),
        *risk_coverage_curve(scores, correct),
    ]
    assert all(output.device == cpu for output in outputs)
