"""The classifier's own certainty (confidence, entropy) in the sample table, AURC by hand, and the report's table that
sets every certainty score against confidence on the same cases."""

import json
import math

import pytest
import torch
from ignite.engine import Engine

from segx_monai.handlers.contract import Columns
from segx_monai.handlers.writers import MultiLabelPredictionColumns, PredictionColumns
from segx_monai.metrics import risk_coverage_curve
from segx_monai.report import build_report
from segx_monai.report.interpretation import load_samples, summarize


def rows_after(handler, items: list[dict]) -> list[list[dict]]:
    """The rows of ``items`` after one iteration of ``handler``."""
    engine = Engine(lambda engine, batch: items)
    handler.attach(engine)
    engine.run([[{"image_id": str(i)} for i in range(len(items))]], max_epochs=1)
    return [item["rows"] for item in engine.state.output]


def test_single_label_confidence_is_the_top_softmax_probability_and_entropy_the_softmax_entropy():
    (row,), = rows_after(PredictionColumns(["a", "b", "c"]), [{"pred": torch.tensor([0.25, 0.5, 0.25])}])
    assert row[Columns.CONFIDENCE] == pytest.approx(0.5)
    # -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 0.5 ln 2 + ln 2 = 1.5 ln 2
    assert row[Columns.ENTROPY] == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_multi_label_confidence_is_the_finding_margin_and_entropy_its_binary_entropy():
    handler = MultiLabelPredictionColumns(["Effusion", "Nodule"], thresholds=[0.5, 0.2])
    items = [{"pred": torch.tensor([0.8, 0.3]), "rows": [{Columns.FINDING: "Effusion"}, {Columns.FINDING: "Nodule"}]},
             {"pred": torch.tensor([0.1, 0.1])}]
    (effusion, nodule), (none,) = rows_after(handler, items)
    assert (effusion[Columns.CONFIDENCE], nodule[Columns.CONFIDENCE]) == pytest.approx((0.3, 0.1))
    assert effusion[Columns.ENTROPY] == pytest.approx(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)), rel=1e-5)
    assert nodule[Columns.ENTROPY] == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)), rel=1e-5)
    assert math.isnan(none[Columns.CONFIDENCE]) and math.isnan(none[Columns.ENTROPY])  # no finding above its threshold


def test_aurc_by_hand():
    # ranked 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), 0.5 (wrong): risks 0, 1/2, 1/3, 1/4, 2/5
    scores, correct = torch.tensor([0.6, 0.9, 0.5, 0.8, 0.7]), torch.tensor([1, 1, 0, 0, 1])
    assert risk_coverage_curve(scores, correct).aurc.item() == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)


HEADER = "image_id,label,prediction,correct,confidence,entropy,ciou,cprecision"
ROWS = [  # b6 has no SegU score: left out of every score, so that all are compared on the same cases
    "b1,mel,mel,1,0.95,0.20,0.50,0.9",
    "b2,nv,nv,1,0.90,0.30,0.10,0.8",
    "b3,nv,mel,0,0.60,0.65,0.20,0.1",
    "b4,nv,nv,1,0.70,0.60,0.40,0.7",
    "b5,mel,nv,0,0.80,0.50,0.30,0.2",
    "b6,mel,mel,1,0.99,0.05,,",
    "b7,nv,nv,0,0.65,0.62,0.05,0.3",
    "b8,mel,mel,1,0.85,0.40,0.35,0.6",
]


def by_hand_auroc(scores, correct):
    """Share of (correct, incorrect) pairs in which the correct one scores higher (no ties in these data)."""
    right, wrong = [s for s, c in zip(scores, correct) if c], [s for s, c in zip(scores, correct) if not c]
    return sum(r > w for r in right for w in wrong) / (len(right) * len(wrong))


def test_certainty_table_sets_each_score_against_confidence(tmp_path):
    (tmp_path / "samples.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    certainty = summarize(load_samples(tmp_path / "samples.csv"), n_bootstrap=200, seed=1)["certainty"]
    assert list(certainty) == ["confidence", "entropy", "ciou", "cprecision"]
    cells = [row.split(",") for row in ROWS if ",," not in row]
    correct = [cell[3] == "1" for cell in cells]
    expected = {"confidence": [float(c[4]) for c in cells], "entropy": [-float(c[5]) for c in cells],
                "ciou": [float(c[6]) for c in cells], "cprecision": [float(c[7]) for c in cells]}
    for key, scores in expected.items():
        result = certainty[key]
        assert (result["n"], result["n_left_out"], result["n_correct"]) == (7, 1, 4)
        assert result["auroc"] == pytest.approx(by_hand_auroc(scores, correct))
        assert result["aurc"] == pytest.approx(float(risk_coverage_curve(torch.tensor(scores), torch.tensor(correct)).aurc))
        assert result["auroc_minus_confidence"] == pytest.approx(result["auroc"] - certainty["confidence"]["auroc"])
        for estimate in ("auroc", "aurc", "auroc_minus_confidence"):
            assert result[f"{estimate}_ci"][0] <= result[estimate] + 1e-12
            assert result[estimate] <= result[f"{estimate}_ci"][1] + 1e-12
    # paired resampling: confidence minus itself is 0 on every resample
    assert certainty["confidence"]["auroc_minus_confidence"] == 0
    assert certainty["confidence"]["auroc_minus_confidence_ci"] == [0, 0]
    assert certainty["cprecision"]["auroc_minus_confidence_ci"][1] > certainty["cprecision"]["auroc_minus_confidence_ci"][0]

    html = build_report(tmp_path, n_bootstrap=50).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["certainty"]) == list(certainty)
    for text in ("Confidence", "Negative entropy", "cPrecision", "AUROC − confidence [95% CI]", "AURC [95% CI]",
                 "No winner is assumed", "lacking an outcome or one of the scores: 1 "):
        assert text in html
