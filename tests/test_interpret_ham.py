"""The SegX/SegU interpretation workflow of the ham_segx bundle: every artefact, and SegX beating the raw map."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ham_workflow, run_workflow
from segx_monai.handlers.review import BY_HAND, NOT_TUNED
from segx_monai.metrics.calibration import combined_score

SCORE = "crelevance_mass"  # the bundles' certainty_score
ARTEFACTS = ("samples.csv", "curves.json", "run.json", "summary.json", "report.html")


def interpret(bundle, data, tmp_path, explainer="gradcam", **overrides):
    out = tmp_path / f"interpret_{explainer}"
    run_workflow(ham_workflow(bundle, data, ["inference.yaml", "interpret.yaml"], explainer_name=explainer, interpret_dir=str(out), **overrides))
    return out


@pytest.mark.parametrize("explainer, variant", [("gradcam", "rethreshold"), ("gradcampp", "intersect"), ("gradient_shap", "rethreshold")])
def test_interpretation_writes_every_artefact(trained_ham_bundle, ham_dir, tmp_path, explainer, variant):
    by_hand = {} if explainer == "gradcam" else {"review_threshold": 0.1}  # the fixture calibrates Grad-CAM only
    sanity = {"sanity_checks": True, "sanity_samples": 3, "sanity_steps": 2} if explainer == "gradcam" else {}
    out = interpret(trained_ham_bundle, ham_dir, tmp_path, explainer, segx_variant=variant, **by_hand, **sanity)
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "samples.csv")))
    run = json.loads((out / "run.json").read_text())
    threshold, calibration = run["review_threshold"], run["review_calibration"]
    if explainer == "gradcam":  # calibrated on the validation fold by the fixture: the file's threshold and fit
        review_file = trained_ham_bundle / "models" / "review_gradcam.json"
        saved = json.loads(review_file.read_text())
        assert threshold == saved["scores"][SCORE]["threshold"] and calibration["source"] == str(review_file)
        assert calibration["goal"] == "accepted_error" and calibration["curve"] == saved["scores"][SCORE]["curve"]
        features = torch.tensor([[float(r["confidence"]), float(r[SCORE])] for r in rows])
        expected = combined_score(saved["combined"][SCORE], features)
        np.testing.assert_allclose([float(r["combined"]) for r in rows], expected.numpy(), rtol=1e-6)
        summary = json.loads((out / "summary.json").read_text())
        test = summary["review_threshold"]["test"]
        assert test["n"] == len(rows) and test["n_flagged"] == sum(r["review"] == "1" for r in rows)
        assert "combined" in summary["certainty"] and "auroc_minus_confidence" in summary["certainty"]["combined"]
        html = (out / "report.html").read_text()
        assert "<h2>Review threshold</h2>" in html and "Combined (confidence + SegU)" in html
        checks = json.loads((out / "sanity.json").read_text())  # the sanity checks, on: in the report
        assert checks["n_pairs"] == 3 and len(checks["cascade"]) == len(checks["settings"]["layers"]) > 1
        assert len(checks["deletion"]["fractions"]) == 3 and "Sanity checks" in html
        tuned = saved["localization"]["groups"]["lesion"]  # the lesion's map thresholds, tuned on the same fold
        assert run["localization_thresholds"]["groups"]["lesion"] == tuned and summary["pointing"]["tuned"]
        lesion = summary["pointing"]["findings"]["lesion"]
        assert lesion["raw"]["threshold"] == tuned["threshold"]["raw"] and lesion["n_fn"] == 0
        assert lesion["n_tp"] == sum(r["correct"] == "1" for r in rows) and lesion["n_fp"] == len(rows) - lesion["n_tp"]
        for row in rows:  # every test image has a lesion: hit and IoU at the tuned thresholds
            assert all(0 <= float(row[f"tuned_{m}_{v}"]) <= 1 for m in ("hit", "iou") for v in ("raw", "segx")), row
        assert "<h2>cheXlocalize-style localisation</h2>" in html
    else:  # a threshold by hand, no fit; the sanity checks off (the tests' default): no sanity.json, no section
        assert threshold == 0.1 and calibration["source"] == BY_HAND and "combined" not in rows[0]
        assert not (out / "sanity.json").exists() and "Sanity checks" not in (out / "report.html").read_text()
        pointing = json.loads((out / "summary.json").read_text())["pointing"]  # no review file: no map thresholds
        assert run["localization_thresholds"]["source"] == NOT_TUNED and not pointing["tuned"]
        assert NOT_TUNED in (out / "report.html").read_text() and all(r["tuned_iou_raw"] == "nan" for r in rows)
        assert pointing["findings"]["all pairs"]["raw"]["hit_rate"]["mean"] is not None
    test_ids = [i["image_id"] for i in json.loads(next((trained_ham_bundle / "datalists").glob("*.json")).read_text())["test"]]
    assert [r["image_id"] for r in rows] == test_ids
    for row in rows:
        for column in ("ciou", "cauitc", "iou_at_q_raw", "iou_at_q_segx", "auitc_raw", "auitc_segx", "hit_raw", "hit_segx", "relevance_mass_raw", "relevance_mass_segx"):
            assert column in row and row[column] != ""
        assert 0 <= float(row["ciou"]) <= 1 and row["review"] == str(int(float(row[SCORE]) < threshold))
        raw = nib.load(out / "maps" / f"{row['image_id']}_raw.nii.gz").get_fdata()
        assert raw.shape == (32, 32) and np.isfinite(raw).all() and raw.min() >= 0 and raw.max() <= 1
        assert (out / "maps" / f"{row['image_id']}_segx.png").is_file() and (out / "overlays" / f"{row['image_id']}.png").is_file()
    assert run["explainer"] == explainer and run["segx_variant"] == variant and run["n_samples"] == len(rows)
    assert run.get("gradcam_layer") == (None if explainer == "gradient_shap" else "features.denseblock2")  # the DenseNet121 default
    assert "data:image/png;base64," in (out / "report.html").read_text()


@pytest.mark.slow
def test_segx_beats_the_raw_map_on_the_synthetic_set(ham_dir, tmp_path_factory):
    """Artefacts outside the lesion pull the raw map away from it; SegX restricted to the predicted lesion does better."""
    bundle = tmp_path_factory.mktemp("segx_vs_raw")
    sized = {"image_size": 64}
    run_workflow(ham_workflow(bundle, ham_dir, ["inference.yaml", "train_classifier.yaml"], max_epochs=3, **sized))
    run_workflow(ham_workflow(bundle, ham_dir, ["inference.yaml", "train_segmenter.yaml"], max_epochs=8, **sized))
    for explainer in ("gradcam", "gradient_shap"):
        out = interpret(bundle, ham_dir, tmp_path_factory.mktemp(explainer), explainer, review_threshold=0.1, **sized)
        summary = json.loads((out / "summary.json").read_text())
        for metric in ("iou_at_q", "auitc"):
            result = summary["localization"][metric]
            assert result["segx"]["mean"] > result["raw"]["mean"], (explainer, metric, result)
