"""The handlers' contract: keys read before they are made fail naming their maker; the sample table and curves the
handlers write are those the report reads (hand-worked 4x4 cases)."""

import csv
import json
import math

import pytest
import torch
from ignite.engine import Engine

from segx_monai.handlers.contract import CERTAINTY_SCORES, LOCALIZATION_METRICS, Columns, HandlerOrderError, localization_column
from segx_monai.handlers.savers import ExplanationSaver
from segx_monai.handlers.segx import LocalizationScores, SegUScores, SegXMaps
from segx_monai.handlers.writers import PredictionColumns, SampleTableWriter
from segx_monai.report import build_report

from conftest import RAMP, block

LAST_ROW = block(slice(3, 4), slice(None)).float()[0]
LEFT_HALF = torch.tensor([[0.9, 0.9, 0.1, 0.1]] * 4)[None]  # region probability: the region is columns 0 and 1


def explained(batch: list[dict]) -> list[dict]:
    """Output items as after the evaluator, RegionSegmentation and ExplainPredictions: class 1 of 2 explained with
    the map RAMP, region = left half."""
    return [{"image": torch.zeros(1, 4, 4), "pred": torch.tensor([0.3, 0.7]), "map": RAMP.clone(), "region_prob": LEFT_HALF,
             "explained_classes": [1]} for _ in batch]


def run(handlers: list, batches: list[list[dict]]) -> Engine:
    engine = Engine(lambda engine, batch: explained(batch))
    for handler in handlers:
        handler.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


@pytest.mark.parametrize(
    "handlers, missing, maker",
    [
        (lambda: [SegUScores(), SegXMaps()], "region_mask", "segx_monai.handlers.segx.SegXMaps"),
        (lambda: [LocalizationScores(), SegXMaps()], "segx_map", "segx_monai.handlers.segx.SegXMaps"),
        (lambda: [SegXMaps(region_key="lesion_prob")], "lesion_prob", "a handler"),
        (lambda: [ExplanationSaver("unused", mean=[0.0], std=[1.0])], "segx_map", "segx_monai.handlers.segx.SegXMaps"),
    ],
    ids=["segu-before-segx", "localization-before-segx", "custom-region-key", "saver-without-segx"],
)
def test_a_handler_before_the_maker_of_its_input_fails_naming_both(handlers, missing, maker):
    handlers = handlers()
    name = type(handlers[0]).__name__
    with pytest.raises(HandlerOrderError) as error:
        run(handlers, [[{"image_id": "a"}]])
    assert f"{name}: the output items have no {missing!r}; it is made by {maker}, which must come before {name}" in str(error.value)


def test_the_report_reads_the_table_and_curves_the_handlers_write(tmp_path):
    # a: ground truth = last row; b: none; c: an empty ground truth (undefined localisation)
    batches = [[{"image_id": "a", "label": 1, "mask": LAST_ROW}, {"image_id": "b", "label": 0}], [{"image_id": "c", "label": 1, "mask": 0 * LAST_ROW}]]
    curves_path = tmp_path / "curves.json"
    handlers = [PredictionColumns(["nv", "mel"]), SegXMaps(q=0.25), SegUScores(q=0.25),
                LocalizationScores(q=0.25, n_thresholds=3, curves_path=curves_path), SampleTableWriter(tmp_path / "samples.csv")]
    engine = run(handlers, batches)

    rows = {row[Columns.IMAGE_ID]: row for row in csv.DictReader(open(tmp_path / "samples.csv"))}
    # raw top 25% = last row: IoU 1 with G, 2/10 with the left half (cIoU); SegX map = RAMP on columns 0-1, its top
    # 25% (above 5.75) = rows 2-3 of columns 0-1: IoU 2/6 with the last row; both maxima (15, 13) lie in G
    a = rows["a"]
    assert [float(a[c]) for c in ("iou_at_q_raw", "iou_at_q_segx", "hit_raw", "hit_segx", "ciou")] == pytest.approx([1, 1 / 3, 1, 1, 0.2])
    assert (a[Columns.PREDICTION], a[Columns.CORRECT], a[Columns.REVIEW], a[Columns.EMPTY_REGION]) == ("mel", "1", "0", "0")
    assert all(rows["b"][localization_column(m, v)] == "" for m in LOCALIZATION_METRICS for v in ("raw", "segx"))
    assert math.isnan(float(rows["c"]["iou_at_q_raw"]))
    assert engine.state.metrics["iou_at_q_segx"] == pytest.approx(1 / 3)
    # IoU of 1[RAMP/15 >= t] with the last row: t = 0 all 16 pixels 4/16, t = 0.5 rows 2-3 4/8, t = 1 one pixel 1/4
    curves = json.loads(curves_path.read_text())
    assert curves["thresholds"] == [0, 0.5, 1] and curves["auitc_curve_raw"] == pytest.approx([0.25, 0.5, 0.25]) and curves["n"] == 1

    build_report(tmp_path, n_bootstrap=20)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["counts"] == {"rows": 3, "images": 3, "correct": 2, "incorrect": 1, "with_ground_truth_mask": 1,
                                 "empty_region": 0, "review": 0}
    localization = summary["localization"]["iou_at_q"]
    assert (localization["n"], localization["n_without_mask"], localization["n_undefined"]) == (1, 2, 0)
    assert (localization["raw"]["mean"], localization["segx"]["mean"]) == pytest.approx((1, 1 / 3))
    assert summary["auitc_curves"]["area_raw"] == pytest.approx(0.25 * 0.25 + 0.5 * 0.5 + 0.25 * 0.25)
    assert all(summary["certainty"][score]["n"] == 3 for score in CERTAINTY_SCORES)
