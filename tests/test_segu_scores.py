"""SegUScores: every certainty score and the region share as sample-table columns, the review flag of the chosen
score, and the report's count of predicted regions larger than q (hand-worked 4x4 cases)."""

import json

import pytest
import torch
from ignite.engine import Engine

from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns
from segx_monai.handlers.segx import SegUScores
from segx_monai.handlers.writers import SampleTableWriter
from segx_monai.report import build_report

from conftest import EMPTY, block

TOP_ROW = block(slice(0, 1), slice(None))


def crafted_maps() -> torch.Tensor:
    """Three raw maps against M = the top row (q = 0.05 keeps each map's maximum, inside M: cIoU 1/4, precision 1)."""
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, 0] = torch.tensor([10.0, 9, 8, 7])  # all relevance in M: cAUITC 0.85, mass 1, rank 1
    maps[1] = 0.9  # M barely above the rest: mass (1.2 + 3 * 0.95) / 14.85 = 0.27, rank 1, cAUITC 0.37
    maps[1, 0, 0] = 0.95
    maps[1, 0, 0, 0] = 1.2
    maps[2, 0, 0, 0] = 10.0  # a peak in M, the next three pixels outside: mass 10 / 16, rank 1 / 4, cAUITC 0.23
    maps[2, 0, 3, 1:] = torch.tensor([3.0, 2, 1])
    return maps


def run_segu(maps: torch.Tensor, regions: torch.Tensor, handlers: list) -> Engine:
    """One iteration over one output item per map, each with its region mask, through ``handlers``."""
    items = [{"image_id": f"s{i}", "map": m[None], "region_mask": r[None]} for i, (m, r) in enumerate(zip(maps, regions))]
    engine = Engine(lambda engine, batch: items)
    for handler in handlers:
        handler.attach(engine)
    engine.run([items], max_epochs=1)
    return engine


def review_flags(score: str) -> tuple[int, ...]:
    engine = run_segu(crafted_maps(), TOP_ROW.expand(3, 1, 4, 4), [SegUScores(review_threshold=0.5, score=score)])
    return tuple(item["rows"][0][Columns.REVIEW] for item in engine.state.output)


def test_every_score_is_a_column_and_the_chosen_one_sets_the_review_flag():
    engine = run_segu(crafted_maps(), TOP_ROW.expand(3, 1, 4, 4), [SegUScores(review_threshold=0.5)])
    rows = [item["rows"][0] for item in engine.state.output]
    assert all(set(CERTAINTY_SCORES) | {Columns.REGION_FRACTION, Columns.REVIEW} <= set(row) for row in rows)
    assert [row[Columns.REGION_FRACTION] for row in rows] == [0.25] * 3
    assert [row[Columns.CIOU] for row in rows] == pytest.approx([0.25] * 3)
    # below 0.5: cIoU on every row (one top pixel against M's 4: 1/4), cAUITC on rows 1-2, mass on row 1, rank on row 2
    flags = {score: review_flags(score) for score in CERTAINTY_SCORES}
    assert flags == {
        Columns.CIOU: (1, 1, 1), Columns.CAUITC: (0, 1, 1), Columns.CPRECISION: (0, 0, 0),
        Columns.CRELEVANCE_MASS: (0, 1, 0), Columns.CRANK_ACCURACY: (0, 0, 1),
    }


def test_an_unknown_score_fails_listing_the_valid_ones():
    with pytest.raises(ValueError, match="certainty_score.*ciou, cauitc, cprecision, crelevance_mass, crank_accuracy.*'iou'"):
        SegUScores(score="iou")


def test_the_report_counts_regions_larger_than_q(tmp_path):
    # regions: the top row (share 0.25), the top two rows (0.5) and none (0): with q = 0.3 one of three is larger
    regions = torch.cat([TOP_ROW, block(slice(0, 2), slice(None)), EMPTY])
    run_segu(crafted_maps(), regions, [SegUScores(q=0.3), SampleTableWriter(tmp_path / "samples.csv")])
    (tmp_path / "run.json").write_text(json.dumps({"q": 0.3}))
    html = build_report(tmp_path, n_bootstrap=10, gallery_size=0).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["regions_larger_than_q"] == {"q": 0.3, "n": 3, "n_larger": 1}
    assert "1 of 3 predicted regions cover more than q = 0.300 of the image" in html
