"""Localisation metrics against a ground-truth mask: hand-worked 4x4 cases, NaN rules, cumulative metrics, Ignite,
gathered over the ranks of a distributed run."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine

from segx_monai.handlers.localization import AUITC, HitRate, IoUAtQ, LocalizationScores, RelevanceMass
from segx_monai.metrics import (
    AUITCMetric,
    HitRateMetric,
    IoUAtQMetric,
    IoUThresholdCurveMetric,
    RelevanceMassMetric,
    compute_auitc,
    compute_hit,
    compute_iou_at_q,
    compute_relevance_mass,
)

from conftest import EMPTY, RAMP, block


BOTTOM_RIGHT_2X2 = block(slice(2, 4), slice(2, 4))
LAST_ROW = block(slice(3, 4), slice(None))


def test_iou_at_q():
    # q = 0.25 selects the last row; against the bottom-right 2x2: |∩| = 2, |∪| = 6; empty G is undefined
    scores = compute_iou_at_q(torch.cat([RAMP, RAMP]), torch.cat([BOTTOM_RIGHT_2X2, EMPTY]), q=0.25)
    assert scores[0].item() == pytest.approx(1 / 3)
    assert scores[1].isnan()


def test_auitc_three_point_grid_and_empty_gt():
    # binary map = top-left 2x2, G = top-left 2x3: 0.25 * 6/16 + 0.5 * 4/6 + 0.25 * 4/6 = 0.59375
    maps = block(slice(0, 2), slice(0, 2)).float().expand(2, 1, 4, 4)
    scores = compute_auitc(maps, torch.cat([block(slice(0, 2), slice(0, 3)), EMPTY]), n_thresholds=3)
    assert scores[0].item() == pytest.approx(0.59375)
    assert scores[1].isnan()


def test_hit():
    # the maximum 15 is at (3, 3)
    gts = torch.cat([BOTTOM_RIGHT_2X2, block(slice(0, 2), slice(None)), EMPTY])
    scores = compute_hit(RAMP.expand(3, 1, 4, 4), gts)
    assert scores[:2].tolist() == [1.0, 0.0] and scores[2].isnan()


def test_hit_ties_take_first_index():
    # maxima at (0, 3) and (2, 1): row-major order puts (0, 3) first; a constant map points at (0, 0)
    tied = torch.zeros(1, 1, 4, 4)
    tied[0, 0, 0, 3] = tied[0, 0, 2, 1] = 1.0
    assert compute_hit(tied, block(slice(2, 3), slice(1, 2))).item() == 0.0
    assert compute_hit(tied, block(slice(0, 1), slice(3, 4))).item() == 1.0
    assert compute_hit(torch.ones(1, 1, 4, 4), block(slice(0, 1), slice(0, 1))).item() == 1.0


def test_iou_and_hit_of_a_declared_set():
    # selected = rows 2-3 of columns 0-1 against the last row: IoU 2/6; RAMP's peak within it is 13 at (3, 1), in G;
    # an empty set scores 0 for both, and an empty G stays undefined
    selected = torch.cat([block(slice(2, 4), slice(0, 2)), EMPTY, block(slice(2, 4), slice(0, 2))])
    gts = torch.cat([LAST_ROW, LAST_ROW, EMPTY])
    iou = compute_iou_at_q(RAMP.expand(3, 1, 4, 4), gts, q=0.25, selected=selected)
    assert iou[:2].tolist() == pytest.approx([1 / 3, 0.0]) and iou[2].isnan()
    hit = compute_hit(RAMP.expand(3, 1, 4, 4), torch.cat([block(slice(3, 4), slice(1, 2)), LAST_ROW, EMPTY]), selected=selected)
    assert hit[:2].tolist() == [1.0, 0.0] and hit[2].isnan()
    metric = HitRateMetric(get_not_nans=True)
    metric(RAMP, block(slice(3, 4), slice(1, 2)), selected=selected[:1])  # the cumulative metric passes the set on
    assert metric.aggregate()[0].item() == 1.0
    with pytest.raises(ValueError, match=r"selected must have the ground truth's shape \(1, 1, 4, 4\), got \(1, 1, 2, 2\)"):
        compute_iou_at_q(RAMP, LAST_ROW, selected=torch.ones(1, 1, 2, 2, dtype=torch.bool))


def test_hit_resamples_map_to_gt():
    # 2x2 [[0, 4], [0, 4]] -> 4x4 rows [0, 1, 3, 4]: first maximum at (0, 3)
    coarse = torch.tensor([[0.0, 4.0], [0.0, 4.0]])[None, None]
    assert compute_hit(coarse, block(slice(0, 1), slice(3, 4))).item() == 1.0


def test_relevance_mass():
    # G = last row: (12 + 13 + 14 + 15) / (0 + 1 + ... + 15) = 54 / 120; zero map and empty G are undefined
    maps = torch.cat([RAMP, torch.zeros_like(RAMP), RAMP])
    scores = compute_relevance_mass(maps, torch.cat([LAST_ROW, LAST_ROW, EMPTY]))
    assert scores[0].item() == pytest.approx(0.45)
    assert scores[1:].isnan().all()


@pytest.mark.parametrize("score_fn", [compute_iou_at_q, compute_auitc, compute_hit, compute_relevance_mass])
def test_batched_equals_per_sample(score_fn):
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(4, 1, 6, 6, generator=generator)
    gts = torch.rand(4, 1, 6, 6, generator=generator) > 0.5
    gts[2] = False
    batched = score_fn(maps, gts)
    single = torch.cat([score_fn(maps[i : i + 1], gts[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, equal_nan=True)


def test_cumulative_metric_skips_undefined_samples():
    # batch 1: IoU@25% = 1/3 and an empty G (NaN); batch 2: last row against the last row = 1
    metric = IoUAtQMetric(q=0.25, get_not_nans=True)
    metric(torch.cat([RAMP, RAMP]), torch.cat([BOTTOM_RIGHT_2X2, EMPTY]))
    metric(RAMP, LAST_ROW)
    mean, not_nans = metric.aggregate()
    assert mean.item() == pytest.approx((1 / 3 + 1) / 2)
    assert not_nans.item() == 2
    assert metric.get_buffer().shape == (3, 1) and metric.get_buffer()[1].isnan()
    assert metric.aggregate()[0].item() == pytest.approx(2 / 3)  # aggregation leaves the buffer unchanged


@pytest.mark.parametrize(
    "metric, expected",
    [
        # hits of RAMP (maximum at (3, 3)): last row 1, top half 0, empty NaN -> mean 1/2
        (HitRateMetric(), 0.5),
        # relevance mass: last row 54/120, top half (0 + ... + 7) / 120 = 28/120, empty NaN
        (RelevanceMassMetric(), (54 + 28) / 120 / 2),
        # AUITC with 3 points of RAMP (E_n = v / 15): t = 0 all 16, t = 0.5 v >= 7.5 (8 pixels), t = 1 v = 15
        #   last row: 4/16, 4/8, 1/4 -> 0.25 * 0.25 + 0.5 * 0.5 + 0.25 * 0.25 = 0.375
        #   top half: 8/16, 0, 0 -> 0.25 * 0.5 = 0.125
        (AUITCMetric(n_thresholds=3), (0.375 + 0.125) / 2),
    ],
)
def test_each_cumulative_metric(metric, expected):
    metric.get_not_nans = True
    metric(RAMP.expand(3, 1, 4, 4), torch.cat([LAST_ROW, block(slice(0, 2), slice(None)), EMPTY]))
    mean, not_nans = metric.aggregate()
    assert mean.item() == pytest.approx(expected)
    assert not_nans.item() == 2


def test_cumulative_metric_accepts_list_of_channel_first_tensors():
    metric = HitRateMetric(reduction="none")
    metric([RAMP[0], RAMP[0]], [LAST_ROW[0], block(slice(0, 1), slice(None))[0]])
    assert metric.aggregate().flatten().tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "handler_type, kwargs, expected", [(IoUAtQ, {"q": 0.25}, 2 / 3), (AUITC, {"n_thresholds": 3}, 0.375)]
)
def test_ignite_handlers(handler_type, kwargs, expected):
    # IoU@25%: batches score [1/3, NaN] and [1] -> mean 2/3
    # AUITC (3 points, E_n = v / 15): bottom-right 2x2 (values 10, 11, 14, 15): t = 0 4/16, t = 0.5 selects
    #   v >= 7.5 (8 pixels, all of G) 4/8, t = 1 selects 15: 1/4 -> 0.375; empty G NaN; last row 0.375 (above)
    batches = [
        {"map": torch.cat([RAMP, RAMP]), "gt": torch.cat([BOTTOM_RIGHT_2X2, EMPTY])},
        {"map": RAMP, "gt": LAST_ROW},
    ]
    handler = handler_type(output_transform=lambda output: (output["map"], output["gt"]), **kwargs)
    engine = Engine(lambda engine, batch: batch)
    handler.attach(engine, "score")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["score"] == pytest.approx(expected)
    assert len(engine.state.metric_details["score"]) == 3


def test_ignite_handler_output_transform_and_other_handlers():
    batches = [{"map": RAMP.expand(2, 1, 4, 4), "gt": torch.cat([LAST_ROW, block(slice(0, 2), slice(None))])}]
    engine = Engine(lambda engine, batch: batch)
    transform = lambda output: (output["map"], output["gt"])  # noqa: E731
    HitRate(output_transform=transform).attach(engine, "hit")
    RelevanceMass(output_transform=transform, save_details=False).attach(engine, "mass")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["hit"] == pytest.approx(0.5)
    assert math.isclose(engine.state.metrics["mass"], (54 + 28) / 120 / 2, rel_tol=1e-6)


def test_threshold_curve_metric_means_the_curves_of_samples_with_ground_truth():
    # RAMP against the last row on 3 thresholds: [4/16, 4/8, 1/4]; against the bottom-right 2x2: t = 0 4/16,
    # t = 0.5 (rows 2-3) 4/8, t = 1 (pixel 15) 1/4; an empty G is left out of the mean and the count
    metric = IoUThresholdCurveMetric(n_thresholds=3)
    metric(RAMP.expand(2, 1, 4, 4), torch.cat([LAST_ROW, EMPTY]))
    metric(RAMP, BOTTOM_RIGHT_2X2)
    mean, count = metric.aggregate()
    assert mean.tolist() == pytest.approx([0.25, 0.5, 0.25]) and count == 2
    assert metric.get_buffer().shape == (3, 3) and metric.get_buffer()[1].isnan().all()


def _score_in_two_processes(rank: int, store: str, out: str) -> None:
    """One rank of a 2-process gloo run of LocalizationScores: rank 0 explains both images, rank 1 none."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        handler = LocalizationScores(q=0.25, n_thresholds=3, curves_path=f"{out}/curves.json")
        engine = SimpleNamespace(state=SimpleNamespace(metrics={}, **_two_images(explained=rank == 0)))
        handler(engine)
        handler.finish(engine)
        Path(f"{out}/metrics{rank}.json").write_text(json.dumps(engine.state.metrics))
    finally:
        dist.destroy_process_group()


def _two_images(explained: bool) -> dict:
    """Batch and output items of two images (ground truths: last row, bottom-right 2x2), explained or not."""
    pairs = 1 if explained else 0
    output = [{"map": RAMP[:pairs], "segx_map": (RAMP * LAST_ROW)[:pairs], "segx_binary": LAST_ROW[:pairs], "rows": [{}]} for _ in range(2)]
    return {"batch": [{"mask": LAST_ROW[0]}, {"mask": BOTTOM_RIGHT_2X2[0]}], "output": output}


@pytest.mark.timeout(300)
def test_localization_scores_gather_every_rank_even_one_without_pairs(tmp_path):
    single = LocalizationScores(q=0.25, n_thresholds=3, curves_path=tmp_path / "curves.json")
    engine = SimpleNamespace(state=SimpleNamespace(metrics={}, **_two_images(explained=True)))
    single(engine)
    single.finish(engine)
    expected, expected_curves = engine.state.metrics, json.loads((tmp_path / "curves.json").read_text())
    assert expected["iou_at_q_raw"] == pytest.approx((1 + 1 / 3) / 2) and expected_curves["n"] == 2

    ddp = tmp_path / "ddp"
    ddp.mkdir()
    torch.multiprocessing.spawn(_score_in_two_processes, args=(str(tmp_path / "store"), str(ddp)), nprocs=2)
    for rank in (0, 1):  # every rank has the global means; the rank that scored nothing joined the gather
        assert json.loads((ddp / f"metrics{rank}.json").read_text()) == pytest.approx(expected)
    curves = json.loads((ddp / "curves.json").read_text())
    assert curves.keys() == expected_curves.keys() and curves["n"] == 2
    for key in ("auitc_curve_raw", "auitc_curve_segx"):
        assert curves[key] == pytest.approx(expected_curves[key])
