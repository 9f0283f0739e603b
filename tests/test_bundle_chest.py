"""The chestx_segx bundle's workflows on tiny synthetic data: properties, multi-label thresholds, DICOM in and out."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from conftest import CHEST_CONFIGS, REPO, chest_workflow, run_workflow
from segx_monai.data.chestx_det import CHESTX_DET10_FINDINGS
from segx_monai.io.dicom import is_dicom


def test_classifier_saves_validation_thresholds_for_every_finding(trained_chest_bundle):
    saved = json.loads((trained_chest_bundle / "models" / "thresholds.json").read_text())
    assert list(saved["thresholds"]) == list(CHESTX_DET10_FINDINGS)
    assert all(0 <= t <= 1 for t in saved["thresholds"].values())
    state = torch.load(trained_chest_bundle / "models" / "classifier.pt", map_location="cpu", weights_only=True)
    assert state["class_layers.out.weight"].shape == (10, 1024) and state["features.conv0.weight"].shape[1] == 1


@pytest.mark.parametrize("config, metric", [("train_classifier.yaml", "test_auroc_per_finding"), ("train_segmenter.yaml", "test_dice")])
def test_evaluate(trained_chest_bundle, chest_dir, config, metric):
    workflow = run_workflow(chest_workflow(trained_chest_bundle, chest_dir, [config, "evaluate.yaml"]))
    assert metric in workflow.parser.get_parsed_content("validate#evaluator").state.metrics


def test_interpretation_rows_per_predicted_finding(trained_chest_bundle, chest_dir, tmp_path):
    out = tmp_path / "interpret"
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["train_classifier.yaml", "interpret.yaml"], interpret_dir=str(out), finding_thresholds=[0.0] * 10))
    rows = list(csv.DictReader(open(out / "samples.csv")))
    n_test = len(json.loads(next((trained_chest_bundle / "datalists").glob("*.json")).read_text())["test"])
    assert len(rows) == 10 * n_test  # every finding is "positive" at threshold 0: one row each
    assert {r["finding"] for r in rows} == set(CHESTX_DET10_FINDINGS)
    for row in rows:
        assert row["iou_at_q_raw"] != "" and 0 <= float(row["ciou"]) <= 1
        assert row["correct"] == str(int(row["finding"] in row["label"].split(";")))
    assert (out / "report.html").is_file() and "by_finding" in json.loads((out / "summary.json").read_text())


def test_inference_on_a_dicom_folder_writes_overlays_as_secondary_capture(trained_chest_bundle, chest_dir, tmp_path):
    out = tmp_path / "inference"
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["train_classifier.yaml", "inference.yaml"], workflow_type="infer",
                                input=str(chest_dir / "dicom"), inference_dir=str(out), finding_thresholds=[0.0] * 10))
    sources = sorted(p for p in (chest_dir / "dicom").iterdir() if is_dicom(p))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted({r["image_id"] for r in rows}) == sorted(p.stem for p in sources)
    source = pydicom.dcmread(sources[0])
    overlay = pydicom.dcmread(out / "dicom" / f"{sources[0].stem}_{CHESTX_DET10_FINDINGS[0]}_segx.dcm")
    assert overlay.StudyInstanceUID == source.StudyInstanceUID and overlay.SeriesInstanceUID != source.SeriesInstanceUID
    assert overlay.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    lungs = np.asarray(Image.open(out / "masks" / f"{sources[0].stem}_lungs.png"))
    assert lungs.shape == (source.Rows, source.Columns)


def test_verify_net_in_out_for_both_networks():
    meta = str(CHEST_CONFIGS / "metadata.json")
    for config, extra in (("train_classifier.yaml", []), ("train_segmenter.yaml", ["--_meta_#network_data_format#outputs#pred#num_channels", "2"])):
        result = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta,
                                 "--config_file", str(CHEST_CONFIGS / config), *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr, result.stderr[-2000:]
