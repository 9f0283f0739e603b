"""Overlays and gallery that do not mislead: one colour scale for raw and SegX, clipped attribution display,
labelled panels, the explainer's own settings, counts of missing masks, and gallery sections ranked on raw evidence."""

import base64
import io
import json
import re
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from segx_monai.handlers.contract import OutputKeys
from segx_monai.handlers.savers import PANELS, ExplanationSaver, heat_overlay, overlay_strip
from segx_monai.report import build_report, write_run_info

from test_report import ROWS, RUN, write_folder

SIZE, PANEL = 16, 224


def test_raw_and_segx_panels_share_the_raw_maps_scale():
    # SegX kept 12% of the raw relevance: on the raw map's scale it must look cooler than the raw map
    picture = np.zeros((SIZE, SIZE, 3), np.uint8)
    raw = np.zeros((SIZE, SIZE)); raw[4:8, 4:8] = 1.0
    segx_map = 0.12 * raw
    strip = overlay_strip(picture, raw, raw > 0, segx_map, np.zeros((SIZE, SIZE), bool))
    raw_panel, segx_panel = strip[:, SIZE:2 * SIZE], strip[:, 3 * SIZE:]
    assert np.array_equal(segx_panel[5:7, 5:7], heat_overlay(picture, segx_map)[5:7, 5:7])
    assert not np.array_equal(segx_panel[5:7, 5:7], raw_panel[5:7, 5:7])


def save(tmp_path, explainer, raw):
    """Run the saver on one 16 x 16 pair whose raw map is ``raw`` (region and SegX map: the whole image)."""
    heat = torch.as_tensor(raw, dtype=torch.float32)[None, None]
    item = {OutputKeys.IMAGE: torch.zeros(1, SIZE, SIZE), OutputKeys.MAP: heat, OutputKeys.SEGX_MAP: heat.clone(),
            OutputKeys.SEGX_BINARY: heat > 0.5, OutputKeys.REGION_MASK: torch.ones_like(heat, dtype=torch.bool), OutputKeys.ROWS: [{}]}
    engine = SimpleNamespace(state=SimpleNamespace(batch=[{"image_id": "s"}], output=[item]))
    ExplanationSaver(tmp_path / explainer, mean=[0.0], std=[1.0], explainer=explainer)(engine)
    return np.asarray(Image.open(tmp_path / explainer / "overlays" / "s.png").convert("RGB"))


def test_attribution_overlays_are_clipped_for_display_only_and_labelled(tmp_path):
    raw = np.full((SIZE, SIZE), 0.05); raw[0, 0] = 1.0  # speckle under one extreme pixel
    shap, cam = save(tmp_path, "gradient_shap", raw), save(tmp_path, "gradcam", raw)
    band = shap.shape[0] - SIZE * (PANEL // SIZE)
    assert shap.shape[1] == len(PANELS) * PANEL and band > 0  # each panel 224 px wide, a label band on top
    raw_panel = lambda strip: strip[band:, PANEL:2 * PANEL]  # noqa: E731
    speckle, extreme = (8 * PANEL // SIZE, 8 * PANEL // SIZE), (0, 0)
    # the 99th percentile tops the attribution scale: the speckle shows as hot as the extreme pixel; Grad-CAM's is not
    assert np.array_equal(raw_panel(shap)[speckle], raw_panel(shap)[extreme])
    assert not np.array_equal(raw_panel(cam)[speckle], raw_panel(cam)[extreme])
    for n in range(len(PANELS)):  # a label drawn in each panel's band
        assert (shap[:band, n * PANEL:(n + 1) * PANEL] < 128).any()
    saved = nib.load(tmp_path / "gradient_shap" / "maps" / "s_raw.nii.gz").get_fdata()
    assert saved.max() == pytest.approx(1.0) and saved[8, 8] == pytest.approx(0.05)  # the saved map is not clipped


@pytest.mark.parametrize("explainer", ["gradcam", "gradient_shap"])
def test_only_the_explainers_own_settings_are_listed(tmp_path, explainer):
    folder = write_folder(tmp_path, ROWS, overlays=("a01",))
    write_run_info(folder, {**RUN, "explainer": explainer, "shap_samples": 50})
    html = build_report(folder, n_bootstrap=20).read_text()
    assert ("shap_samples" in json.loads((folder / "run.json").read_text())) == (explainer == "gradient_shap")
    assert ("shap_samples" in html) == (explainer == "gradient_shap")
    assert ("99th percentile" in html) == (explainer == "gradient_shap")


# a13: the raw map's top q misses the ground truth entirely (raw IoU@q 0, raw relevance mass 0.01), SegX IoU@q the
# highest; a14: a ground-truth mask and an all-zero raw map (relevance mass undefined)
OUTSIDE = "a13,mel,mel,0.95,1,0.02,0.03,0.00,0.90,0.02,0.60,0,1,0.01,0.90,0,1,0.95,0.05"
ZERO_MAP = "a14,nv,nv,0.90,1,0.00,0.00,0.00,0.00,0.00,0.00,0,0,nan,nan,0,1,0.10,0.90"


@pytest.fixture
def gallery(tmp_path):
    folder = write_folder(tmp_path, [*ROWS, OUTSIDE, ZERO_MAP], overlays=("a01", "a04", "a13"))
    html = build_report(folder, n_bootstrap=20).read_text()
    return html, json.loads((folder / "summary.json").read_text())


def test_without_mask_counts_missing_masks_not_all_zero_maps(gallery):
    _, summary = gallery
    mass, iou = summary["localization"]["relevance_mass"], summary["localization"]["iou_at_q"]
    # without a mask: a06 (empty cells) and a10 (all NaN); undefined: a14 only, though it has a mask
    assert (mass["n"], mass["n_without_mask"], mass["n_undefined"]) == (11, 2, 1)
    assert (iou["n"], iou["n_without_mask"], iou["n_undefined"]) == (12, 2, 0)
    assert summary["counts"]["with_ground_truth_mask"] == 12


def test_gallery_ranks_on_raw_evidence_with_scores_in_captions(gallery):
    html, summary = gallery
    assert summary["gallery"]["best"] == ["a01", "a04"]  # a13's raw map misses the region: not best localised
    assert summary["gallery"]["outside"][0] == "a13"
    assert summary["gallery"]["review"] == ["a13", "a04"]  # review == 1 only, lowest cIoU first
    for heading in ("Looked outside the region", "Flagged for review"):
        assert f"<h3>{heading}</h3>" in html
    assert "a13: label mel, prediction mel (probability 0.950); IoU@q raw 0.000 / SegX 0.900; relevance mass raw " \
           "0.010 / SegX 0.900; cIoU 0.020; flagged for review: yes" in html
    tiles = re.findall(r'<figure><img src="data:image/png;base64,([^"]*)" alt="a\d+', html)
    assert tiles and all(Image.open(io.BytesIO(base64.b64decode(t))).width >= len(PANELS) * PANEL for t in tiles)
