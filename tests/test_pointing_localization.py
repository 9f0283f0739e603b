"""cheXlocalize-style localisation: thresholded maps, the threshold tuned on a case with a known optimum, the
per-finding summary by hand, the validation tuner and review file, the test-fold columns and the report's table."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import EMPTY, block
from segx_monai.data.chestx_det import CHESTX_DET10_FINDINGS
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns
from segx_monai.handlers.pointing import LocalizationThresholdTuner, PairGroundTruth, TunedLocalizationScores
from segx_monai.handlers.review import NOT_TUNED, ReviewCalibration, ReviewCalibrationSaver
from segx_monai.metrics.pointing import chexlocalize_summary, localize, threshold_maps, tune_localization_threshold
from segx_monai.report import build_report

NAN = math.nan


def _flat(values: list[float], inside: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 1, 4, 4) map whose first pixels (row-major) take ``values`` (the rest 0), and the mask of its first
    ``inside`` pixels."""
    image = torch.zeros(16)
    image[: len(values)] = torch.tensor(values)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[:inside] = True
    return image.view(1, 1, 4, 4), mask.view(1, 1, 4, 4)


# the mask of A is its four highest pixels (down to 0.63), beside a 0.61 outside: IoU 1 for t in (0.61, 0.63], 4/5 just
# below, 3/4 just above; B's mask is its two highest (1, 0.9), beside 0.62 outside: IoU 1 for t in (0.62, 0.9], else 2/3.
# Mean: 1 only for t in (0.62, 0.63]; a 21-point grid does best at 0.65 (0.75 and 1: 0.875).
MAP_A, MASK_A = _flat([1.0, 0.8, 0.7, 0.63, 0.61, 0.55, 0.3], inside=4)
MAP_B, MASK_B = _flat([1.0, 0.9, 0.62], inside=2)
GOLDEN_MAPS, GOLDEN_MASKS = torch.cat([MAP_A, MAP_B]), torch.cat([MASK_A, MASK_B])


def test_a_low_resolution_map_is_upsampled_normalised_and_thresholded():
    # 2x2 -> 4x4 bilinear (align_corners=False): each row [0, 1] becomes [0, 0.25, 0.75, 1]; x10 + 3 is normalised away
    low = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2) * 10 + 3
    assert threshold_maps(low, (4, 4), 0.5).equal(block(slice(None), slice(2, 4)))
    assert threshold_maps(low, (4, 4), 0.2).equal(block(slice(None), slice(1, 4)))
    assert threshold_maps(low, (4, 4), 0.5, normalize=False).all()  # 3 to 13: every pixel is above 0.5
    per_map = threshold_maps(torch.cat([low, low]), (4, 4), torch.tensor([0.5, 0.2]))
    assert per_map[0].equal(block(slice(None), slice(2, 4))[0]) and per_map[1].equal(block(slice(None), slice(1, 4))[0])


def test_localize_one_call_with_an_absent_finding():
    low = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    right_half = block(slice(None), slice(2, 4))
    scores = localize(torch.cat([low, low, low]), torch.cat([right_half, block(slice(0, 1), slice(0, 1)), EMPTY]), 0.2)
    # t = 0.2 selects columns 1-3 (12 pixels): IoU 8/12 with the right half, 0/13 with the corner, 0 for no finding
    assert scores["iou"].tolist() == pytest.approx([8 / 12, 0.0, 0.0])
    assert scores["hit"][:2].tolist() == [1.0, 0.0] and scores["hit"][2].isnan()  # the maximum is in column 2 or 3


def test_the_tuned_threshold_lies_in_the_known_best_interval():
    threshold, miou = tune_localization_threshold(GOLDEN_MAPS, GOLDEN_MASKS)
    assert 0.62 < threshold <= 0.63 and miou == 1.0
    for t in (0.62, 0.635):  # just outside the interval the mean IoU is lower: 5/6 and 0.875
        assert localize(GOLDEN_MAPS, GOLDEN_MASKS, t)["iou"].mean() < 1
    coarse, coarse_miou = tune_localization_threshold(GOLDEN_MAPS, GOLDEN_MASKS, tolerance=0.05)  # a 21-point grid
    assert coarse == pytest.approx(0.65) and coarse_miou == pytest.approx(0.875)
    # without normalisation maps in [3, 6] are above every threshold in [0, 1]: all 16 pixels, IoU 4/16 and 2/16
    unscaled = tune_localization_threshold(GOLDEN_MAPS * 3 + 3, GOLDEN_MASKS, normalize=False)
    assert unscaled[1] == pytest.approx(3 / 16)
    assert tune_localization_threshold(GOLDEN_MAPS.half(), GOLDEN_MASKS)[1] == 1.0  # float16 storage keeps the optimum
    many = tune_localization_threshold(GOLDEN_MAPS.repeat(65, 1, 1, 1), GOLDEN_MASKS.repeat(65, 1, 1, 1))  # 3 sorts of <= 64
    assert many == (threshold, miou)
    with pytest.raises(ValueError, match="tolerance"):
        tune_localization_threshold(GOLDEN_MAPS, GOLDEN_MASKS, tolerance=0)


def test_chexlocalize_summary_by_hand():
    summary = chexlocalize_summary(torch.tensor([0.5, 0.2]), torch.tensor([1.0, 0.0]), n_fp=1, n_fn=2)
    assert (summary["n_tp"], summary["n_fp"], summary["n_fn"]) == (2, 1, 2)
    assert summary["hit_rate"] == 0.5 and summary["miou_tp"] == pytest.approx(0.35)
    assert summary["miou_all"] == pytest.approx(0.7 / 5)  # the FP and the two FN count 0
    none = chexlocalize_summary(torch.zeros(0), torch.zeros(0), n_fp=1, n_fn=0)
    assert math.isnan(none["hit_rate"]) and math.isnan(none["miou_tp"]) and none["miou_all"] == 0.0


FINDINGS = ["A", "B", "C"]


def _engine(segx_scale: float = 1.0) -> SimpleNamespace:
    """Two images, findings A, B, C: the first has A and C and is predicted A (right) and B (wrong: an empty mask);
    the second has A, predicted. The A pairs are the golden maps; their SegX maps are their masks (best at any t > 0)."""
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, 0], masks[0, 2], masks[1, 0] = MASK_A[0, 0], block(slice(3, 4), slice(None))[0, 0], MASK_B[0, 0]
    scores = {Columns.CONFIDENCE: 0.3, **dict.fromkeys(CERTAINTY_SCORES, 0.5)}
    items = [
        {"map": torch.cat([MAP_A, MAP_B]), "segx_map": torch.cat([MASK_A.float() * segx_scale, MAP_B]), "explained_classes": [0, 1],
         "rows": [{Columns.FINDING: "A", Columns.CORRECT: 1, **scores}, {Columns.FINDING: "B", Columns.CORRECT: 0, **scores}]},
        {"map": MAP_B, "segx_map": MASK_B.float(), "explained_classes": [0],
         "rows": [{Columns.FINDING: "A", Columns.CORRECT: 1, **scores, Columns.CONFIDENCE: 0.9}]},
    ]
    return SimpleNamespace(state=SimpleNamespace(batch=[{"finding_masks": m} for m in masks], output=items))


def test_the_tuner_writes_the_localization_entry_once_into_the_review_file(tmp_path):
    ground_truth = PairGroundTruth("finding_masks", FINDINGS)
    tuner = LocalizationThresholdTuner(ground_truth)
    settings = {"image_size": 4}
    saver = ReviewCalibrationSaver(tmp_path / "review.json", "accepted_error", 0.1, settings, localization=tuner)
    engine = _engine()
    tuner.reset()
    tuner(engine)
    saver.collect(engine)
    saver.save(engine)
    content = json.loads((tmp_path / "review.json").read_text())
    entry = content["localization"]
    assert entry["fold"] == "validation" and entry["ground_truth"] == "finding_masks" and list(entry["groups"]) == FINDINGS
    a = entry["groups"]["A"]  # the two true positives: the golden pair (raw) and masks as maps (SegX)
    assert a["n_pairs"] == 2 and 0.62 < a["threshold"]["raw"] <= 0.63 and a["validation_miou"] == {"raw": 1.0, "segx": 1.0}
    assert a["threshold"]["segx"] == pytest.approx(0.5)  # every t in (0, 1] is best: the middle of the run
    for name in ("B", "C"):  # B only wrong, C never predicted: nothing to tune on
        group = entry["groups"][name]
        assert group["n_pairs"] == 0 and group["threshold"] == {"raw": None, "segx": None} and "no true-positive pair" in group["reason"]
    assert set(content["scores"]) >= {Columns.CONFIDENCE}  # the review thresholds beside it, in the same file

    calibration = ReviewCalibration(tmp_path / "review.json", settings, "flag_rate", 0.5)  # another goal: maps alike
    assert calibration.localization_thresholds() == {name: entry["groups"][name]["threshold"] for name in FINDINGS}
    assert calibration.localization_record()["source"] == str(tmp_path / "review.json")
    for other in (ReviewCalibration(tmp_path / "review.json", {"image_size": 8}, "accepted_error", 0.1),
                  ReviewCalibration(tmp_path / "missing.json", settings, "accepted_error", 0.1)):
        assert other.localization_thresholds() is None and other.localization_record()["source"] == NOT_TUNED
    assert "image_size 4" in ReviewCalibration(tmp_path / "review.json", {"image_size": 8}, "accepted_error", 0.1).localization_record()["reason"]


def test_a_scaled_segx_map_gives_the_same_threshold_since_maps_are_normalised():
    thresholds = {}
    for scale in (1.0, 7.0):
        tuner = LocalizationThresholdTuner(PairGroundTruth("finding_masks", FINDINGS))
        tuner.reset()
        tuner(_engine(scale))
        thresholds[scale] = tuner.result()["groups"]["A"]["threshold"]
    assert thresholds[1.0] == thresholds[7.0]
    coarse = LocalizationThresholdTuner(PairGroundTruth("finding_masks", FINDINGS), tolerance=0.05)
    coarse.reset()
    coarse(_engine())
    assert coarse.result()["groups"]["A"]["threshold"]["raw"] == pytest.approx(0.65) != thresholds[1.0]["raw"]


def test_test_fold_columns_at_the_tuned_thresholds():
    ground_truth = PairGroundTruth("finding_masks", FINDINGS)
    engine = _engine()
    TunedLocalizationScores(ground_truth, {"A": {"raw": 0.625, "segx": 0.5}, "B": {"raw": 0.5, "segx": None}})(engine)
    (a1, b1), (a2,) = (item["rows"] for item in engine.state.output)
    for row in (a1, a2):
        assert row["tuned_iou_raw"] == 1.0 and row["tuned_iou_segx"] == 1.0 and row["tuned_hit_raw"] == 1.0
    assert b1["tuned_iou_raw"] == 0.0 and math.isnan(b1["tuned_iou_segx"])  # B is absent: 0; no SegX threshold: NaN
    assert math.isnan(b1["tuned_hit_raw"])  # the pointing game is undefined without a ground truth
    untuned = _engine()
    TunedLocalizationScores(ground_truth, None)(untuned)
    rows = [row for item in untuned.state.output for row in item["rows"]]
    assert all(math.isnan(row["tuned_iou_raw"]) for row in rows) and rows[0]["tuned_hit_raw"] == 1.0
    lesion = PairGroundTruth("mask", name="lesion")
    assert lesion.groups == ("lesion",) and lesion({"mask": MASK_A[0]}, {"map": MAP_A})[1] == ["lesion"]


CHEST_HEADER = "image_id,finding,label,predicted_findings,correct,tuned_hit_raw,tuned_iou_raw,tuned_hit_segx,tuned_iou_segx"
CHEST_ROWS = [  # i1 has A and C, predicted A and B; i2 has A, predicted; i3 has A, missed (its one row, no finding)
    "i1,A,A;C,A;B,1,1,0.5,1,0.7",
    "i1,B,A;C,A;B,0,nan,0,nan,0",
    "i2,A,A,A,1,0,0.2,1,0.4",
    "i3,,A,,0,,,,",
]
RECORD = {"source": "/bundle/models/review_gradcam.json", "fold": "validation", "groups": {
    "A": {"n_pairs": 3, "threshold": {"raw": 0.4, "segx": 0.6}, "validation_miou": {"raw": 0.3, "segx": 0.5}},
    "B": {"n_pairs": 1, "threshold": {"raw": 0.2, "segx": 0.3}, "validation_miou": {"raw": 0.1, "segx": 0.2}},
    "C": {"n_pairs": 0, "threshold": {"raw": None, "segx": None}, "validation_miou": {"raw": None, "segx": None},
          "reason": "no true-positive pair of 'C' on the validation fold"}}}


def _report(folder, header, rows, record):
    folder.mkdir()
    (folder / "samples.csv").write_text("\n".join([header, *rows]) + "\n")
    (folder / "run.json").write_text(json.dumps({"explainer": "gradcam", "q": 0.05, **({"localization_thresholds": record} if record else {})}))
    html = build_report(folder, n_bootstrap=200).read_text()
    return html, json.loads((folder / "summary.json").read_text())["pointing"]


def test_report_table_by_hand(tmp_path):
    html, pointing = _report(tmp_path / "chest", CHEST_HEADER, CHEST_ROWS, RECORD)
    assert pointing["tuned"] and pointing["source"] == RECORD["source"] and list(pointing["findings"]) == ["A", "B", "C"]
    a, b, c = (pointing["findings"][name] for name in "ABC")
    assert (a["n_tp"], a["n_fp"], a["n_fn"]) == (2, 0, 1) and a["raw"]["threshold"] == 0.4 and a["segx"]["validation_miou"] == 0.5
    expected = {"raw": {"hit_rate": 0.5, "miou_tp": 0.35, "miou_all": 0.7 / 3}, "segx": {"hit_rate": 1.0, "miou_tp": 0.55, "miou_all": 1.1 / 3}}
    for variant, metrics in expected.items():
        for key, value in metrics.items():
            estimate = a[variant][key]
            assert estimate["mean"] == pytest.approx(value) and estimate["ci"][0] <= estimate["mean"] <= estimate["ci"][1]
    assert a["difference"]["miou_all"]["mean"] == pytest.approx(0.4 / 3)
    assert (b["n_tp"], b["n_fp"], b["n_fn"]) == (0, 1, 0) and b["raw"]["miou_all"]["mean"] == 0.0 and b["raw"]["hit_rate"]["mean"] is None
    assert (c["n_fp"], c["n_fn"]) == (None, 1) and c["raw"]["miou_all"]["mean"] is None and "no true-positive pair" in c["note"]
    pooled = pointing["pooled"]  # A and B, the findings with a threshold
    assert pooled["findings"] == ["A", "B"] and (pooled["n_tp"], pooled["n_fp"], pooled["n_fn"]) == (2, 1, 1)
    assert pooled["raw"]["miou_all"]["mean"] == pytest.approx(0.7 / 4) and pooled["segx"]["miou_tp"]["mean"] == pytest.approx(0.55)
    assert "<h2>cheXlocalize-style localisation</h2>" in html and "0.400 (validation mIoU 0.300, n 3)" in html
    assert f"{0.7 / 3:.3f} [" in html and "2 / 0 / 1" in html


def test_single_label_wrong_predictions_count_as_false_positives(tmp_path):
    header = "image_id,label,prediction,correct,tuned_hit_raw,tuned_iou_raw,tuned_hit_segx,tuned_iou_segx"
    rows = ["s1,mel,mel,1,1,0.6,1,0.8", "s2,nv,mel,0,1,0.5,0,0.1", "s3,nv,nv,1,0,0.2,1,0.4"]
    record = {"source": "/b/review.json", "groups": {"lesion": {"n_pairs": 9, "threshold": {"raw": 0.3, "segx": 0.4},
                                                               "validation_miou": {"raw": 0.4, "segx": 0.5}}}}
    _, pointing = _report(tmp_path / "skin", header, rows, record)
    lesion = pointing["findings"]["lesion"]
    assert (lesion["n_tp"], lesion["n_fp"], lesion["n_fn"]) == (2, 1, 0)  # s2 is wrong: its IoU 0.5 counts 0
    assert lesion["raw"]["miou_all"]["mean"] == pytest.approx(0.8 / 3) and lesion["raw"]["miou_tp"]["mean"] == pytest.approx(0.4)
    assert lesion["segx"]["hit_rate"]["mean"] == 1.0 and pointing["pooled"]["raw"]["miou_all"]["mean"] == pytest.approx(0.8 / 3)


def test_without_tuned_thresholds_the_table_says_so(tmp_path):
    rows = ["i1,A,A;C,A;B,1,1,nan,1,nan", "i1,B,A;C,A;B,0,nan,nan,nan,nan", "i2,A,A,A,1,0,nan,1,nan", CHEST_ROWS[3]]
    html, pointing = _report(tmp_path / "by_hand", CHEST_HEADER, rows, {"source": NOT_TUNED, "reason": "no review file /x.json"})
    assert not pointing["tuned"] and pointing["reason"] == "no review file /x.json"
    assert html.count(NOT_TUNED) >= 3 and "no review file /x.json" in html  # in each finding's threshold cell and a note
    assert all(group["raw"]["threshold"] is None and group["raw"]["miou_all"]["mean"] is None for group in pointing["findings"].values())
    assert pointing["findings"]["A"]["raw"]["hit_rate"]["mean"] == 0.5  # the pointing game needs no threshold
    _, older = _report(tmp_path / "older", CHEST_HEADER, CHEST_ROWS, None)  # run.json without the record
    assert not older["tuned"] and "run.json has no localization_thresholds" in older["reason"]


def test_the_chest_calibration_tunes_every_finding_or_says_why(trained_chest_bundle):
    entry = json.loads((trained_chest_bundle / "models" / "review_gradcam.json").read_text())["localization"]
    assert list(entry["groups"]) == list(CHESTX_DET10_FINDINGS) and entry["ground_truth"] == "finding_masks"
    for name, group in entry["groups"].items():
        if group["n_pairs"]:
            assert all(0 <= group["threshold"][v] <= 1 and 0 <= group["validation_miou"][v] <= 1 for v in ("raw", "segx")), name
        else:
            assert group["threshold"] == {"raw": None, "segx": None} and name in group["reason"]
    assert any(group["n_pairs"] for group in entry["groups"].values())
