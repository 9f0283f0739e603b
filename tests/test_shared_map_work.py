"""The per-map work the SegX, SegU and localisation handlers share within a batch (each raw map's top fraction and
threshold levels, found once) gives bit for bit the scores of each function called alone, batch after batch."""

import pytest
import torch
from ignite.engine import Engine, Events

from segx_monai.core import (
    compute_cauitc, compute_ciou, compute_cprecision, compute_crank_accuracy, compute_crelevance_mass, segx,
    threshold_curve_iou,
)
from segx_monai.handlers.contract import Columns, localization_column
from segx_monai.handlers.segx import LocalizationScores, SegUScores, SegXMaps
from segx_monai.handlers.shared import shared
from segx_monai.metrics import IoUThresholdCurveMetric, compute_auitc, compute_hit, compute_iou_at_q, compute_relevance_mass

Q, N_THRESHOLDS = 0.1, 11


def batch(seed: int) -> tuple[list[dict], list[dict]]:
    """Output and batch items of 5 images, 8x8: maps with ties, one flat; region probabilities, one region empty, one
    the whole image; ground truths, one empty."""
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(5, 1, 1, 8, 8, generator=generator).round(decimals=1)
    maps[0] = 0.5
    regions = torch.rand(5, 1, 8, 8, generator=generator)
    regions[1], regions[2] = 0.0, 1.0
    truths = torch.rand(5, 1, 8, 8, generator=generator) > 0.6
    truths[3] = False
    output = [{"map": m, "explained_classes": [0], "region_prob": r} for m, r in zip(maps, regions)]
    return output, [{"mask": g} for g in truths]


def same(values, expected: torch.Tensor) -> bool:
    """Bit-identical as float64, NaN equal to NaN (scores are never negative)."""
    return torch.equal(torch.as_tensor(values, dtype=torch.float64).nan_to_num(-1.0), expected.double().nan_to_num(-1.0))


def test_the_handlers_score_each_batch_as_the_functions_alone():
    batches = [batch(seed) for seed in (0, 1)]  # same shapes: a result kept from the first batch would be reused wrongly
    engine = Engine(lambda engine, truths: batches[engine.state.iteration - 1][0])
    handlers = [SegXMaps(q=Q), SegUScores(q=Q, n_thresholds=N_THRESHOLDS), LocalizationScores(q=Q, n_thresholds=N_THRESHOLDS)]
    for handler in handlers:
        handler.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append([dict(item) for item in e.state.output]))
    engine.run([truths for _, truths in batches], max_epochs=1)

    curves, expected_curves = IoUThresholdCurveMetric(N_THRESHOLDS), {"raw": [], "segx": []}
    for (output, truths), items in zip(batches, seen, strict=True):
        maps = torch.cat([item["map"] for item in output])
        gt = torch.stack([truth["mask"] for truth in truths])
        alone = segx(maps, torch.stack([item["region_prob"] for item in output]), q=Q)
        assert torch.equal(torch.cat([item["segx_map"] for item in items]), alone.heatmap)
        assert torch.equal(torch.cat([item["segx_binary"] for item in items]), alone.binary)
        expected = {
            Columns.CIOU: compute_ciou(maps, alone.mask, Q), Columns.CAUITC: compute_cauitc(maps, alone.mask, N_THRESHOLDS),
            Columns.CPRECISION: compute_cprecision(maps, alone.mask, Q),
            Columns.CRELEVANCE_MASS: compute_crelevance_mass(maps, alone.mask),
            Columns.CRANK_ACCURACY: compute_crank_accuracy(maps, alone.mask),
        }
        for variant, variant_maps, selected in (("raw", maps, None), ("segx", alone.heatmap, alone.binary)):
            expected[localization_column("iou_at_q", variant)] = compute_iou_at_q(variant_maps, gt, Q, selected)
            expected[localization_column("auitc", variant)] = compute_auitc(variant_maps, gt, N_THRESHOLDS)
            expected[localization_column("hit", variant)] = compute_hit(variant_maps, gt, selected)
            expected[localization_column("relevance_mass", variant)] = compute_relevance_mass(variant_maps, gt)
            expected_curves[variant].append(curves.curves(variant_maps, gt))
        rows = [item["rows"][0] for item in items]
        for column, values in expected.items():
            assert same([row[column] for row in rows], values), column
    for variant, parts in expected_curves.items():
        assert same(handlers[2].curves[variant].get_buffer(), torch.cat(parts)), variant


def test_shared_work_is_made_once_per_batch_and_source():
    engine = Engine(lambda engine, batch: batch)
    engine.state.output = []
    made = []

    def make() -> torch.Tensor:
        made.append(1)
        return torch.zeros(1)

    sources = [torch.ones(2)]
    shared(engine, ("top",), sources, make)
    shared(engine, ("top",), sources, make)
    assert len(made) == 1
    shared(engine, ("top",), [torch.ones(2)], make)  # equal values, another tensor: made again
    shared(engine, ("levels",), sources, make)
    assert len(made) == 3
    engine.state.output = []  # the next iteration's output: nothing kept
    shared(engine, ("levels",), sources, make)
    assert len(made) == 4


def test_thresholds_must_ascend():
    maps, masks = torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="ascending"):
        threshold_curve_iou(maps, masks, torch.tensor([0.5, 0.1]))
