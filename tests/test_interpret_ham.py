"""The SegX/SegU interpretation workflow of the ham_segx bundle: every artefact, and SegX beating the raw map."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from conftest import ham_workflow, run_workflow

ARTEFACTS = ("samples.csv", "curves.json", "run.json", "summary.json", "report.html")


def interpret(bundle, data, tmp_path, explainer="gradcam", **overrides):
    out = tmp_path / f"interpret_{explainer}"
    run_workflow(ham_workflow(bundle, data, ["inference.yaml", "interpret.yaml"], explainer_name=explainer, interpret_dir=str(out), **overrides))
    return out


@pytest.mark.parametrize("explainer, variant", [("gradcam", "rethreshold"), ("gradcampp", "intersect"), ("gradient_shap", "rethreshold")])
def test_interpretation_writes_every_artefact(trained_ham_bundle, ham_dir, tmp_path, explainer, variant):
    out = interpret(trained_ham_bundle, ham_dir, tmp_path, explainer, segx_variant=variant)
    for name in ARTEFACTS:
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "samples.csv")))
    test_ids = [i["image_id"] for i in json.loads(next((trained_ham_bundle / "datalists").glob("*.json")).read_text())["test"]]
    assert [r["image_id"] for r in rows] == test_ids
    for row in rows:
        for column in ("ciou", "cauitc", "iou_at_q_raw", "iou_at_q_segx", "auitc_raw", "auitc_segx", "hit_raw", "hit_segx", "relevance_mass_raw", "relevance_mass_segx"):
            assert column in row and row[column] != ""
        assert 0 <= float(row["ciou"]) <= 1 and row["review"] == str(int(float(row["ciou"]) < 0.1))
        raw = nib.load(out / "maps" / f"{row['image_id']}_raw.nii.gz").get_fdata()
        assert raw.shape == (32, 32) and np.isfinite(raw).all() and raw.min() >= 0 and raw.max() <= 1
        assert (out / "maps" / f"{row['image_id']}_segx.png").is_file() and (out / "overlays" / f"{row['image_id']}.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["explainer"] == explainer and run["segx_variant"] == variant and run["n_samples"] == len(rows)
    assert "data:image/png;base64," in (out / "report.html").read_text()


@pytest.mark.slow
def test_segx_beats_the_raw_map_on_the_synthetic_set(ham_dir, tmp_path_factory):
    """Artefacts outside the lesion pull the raw map away from it; SegX restricted to the predicted lesion does better."""
    bundle = tmp_path_factory.mktemp("segx_vs_raw")
    sized = {"image_size": 64}
    run_workflow(ham_workflow(bundle, ham_dir, ["inference.yaml", "train_classifier.yaml"], max_epochs=3, **sized))
    run_workflow(ham_workflow(bundle, ham_dir, ["inference.yaml", "train_segmenter.yaml"], max_epochs=8, **sized))
    for explainer in ("gradcam", "gradient_shap"):
        summary = json.loads((interpret(bundle, ham_dir, tmp_path_factory.mktemp(explainer), explainer, **sized) / "summary.json").read_text())
        for metric in ("iou_at_q", "auitc"):
            result = summary["localization"][metric]
            assert result["segx"]["mean"] > result["raw"]["mean"], (explainer, metric, result)
