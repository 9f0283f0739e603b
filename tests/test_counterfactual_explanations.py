"""Counterfactual explanations measured and shown: validity, weak-segmentation IoU and the Fréchet distance on hand-made
tensors, the handlers' columns and counterfactual.json on tiny engine outputs, the five-panel overlay, the report's
section, and a counterfactual interpretation of the tiny chest bundle next to Grad-CAM."""

from __future__ import annotations

import csv
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from torch import nn

from conftest import CALIBRATE, CHEST_CONFIGS, CHEST_TINY, INTERPRET, chest_workflow, run_workflow

from segx_monai.handlers.classifier_record import ClassifierRecord, WeightsWithClassifier
from segx_monai.explainers import COUNTERFACTUAL, Counterfactual
from segx_monai.handlers.contract import HandlerOrderError, OutputKeys
from segx_monai.handlers.counterfactual import CLASSIFIER_FEATURES, CounterfactualRealism, CounterfactualScores
from segx_monai.handlers.pointing import PairGroundTruth
from segx_monai.handlers.savers import COUNTERFACTUAL_PANELS, PANELS, ExplanationSaver
from segx_monai.handlers.segx import ExplainPredictions
from segx_monai.metrics.counterfactual import (
    counterfactual_validity, frechet_distance, target_posterior, weak_segmentation, weak_segmentation_ious,
)
from segx_monai.report import build_report, write_run_info
from segx_monai.report.comparison import write_comparison

from test_report import ROWS, write_folder

# a 4x4 map: a 3x3 block changed by 0.5 (rows and columns 0-2) and a one-pixel speck changed by 0.9 at (3, 3)
BLOCK = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
BLOCK[..., :3, :3] = True
MAP = BLOCK * 0.5
MAP[..., 3, 3] = 0.9
LEFT = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
LEFT[..., :2] = True  # a region of columns 0-1
NOTHING = torch.zeros(1, 1, 4, 4, dtype=torch.bool)


def test_validity_is_the_share_of_confident_samples_moved_beyond_tau():
    # confident (target probability <= 0.2): samples 0, 1, 3; they rise by 0.85, 0.35, 0.86: two of three beyond 0.8
    before, after = torch.tensor([0.10, 0.15, 0.50, 0.05]), torch.tensor([0.95, 0.50, 1.00, 0.91])
    assert counterfactual_validity(before, after) == (pytest.approx(2 / 3), 3)
    assert counterfactual_validity(before, after, tau=0.3) == (1.0, 3)
    share, n = counterfactual_validity(torch.tensor([0.5, 0.9]), torch.tensor([1.0, 1.0]))
    assert math.isnan(share) and n == 0  # no confident sample: undefined, not 0


def test_weak_segmentation_iou_raw_and_segx_by_hand():
    # map > 0.25: the block and the speck, 10 pixels, 9 of them in the block: IoU 0.9; within the left columns, the
    # 6 block pixels there: 6 / 9; the speck is opened away by a 3x3 square (opening 1): IoU 1
    raw, segx = weak_segmentation_ious(MAP, LEFT, BLOCK)
    assert (float(raw), float(segx)) == pytest.approx((0.9, 6 / 9))
    assert float(weak_segmentation_ious(MAP, LEFT, BLOCK, opening=1)[0]) == pytest.approx(1.0)
    assert torch.equal(weak_segmentation(MAP, opening=1), BLOCK)
    assert float(weak_segmentation_ious(MAP, LEFT, BLOCK, threshold=0.6)[0]) == 0.0  # the speck alone
    assert float(weak_segmentation_ious(MAP, NOTHING, BLOCK)[1]) == pytest.approx(0.9)  # no region: SegX keeps it all
    assert all(math.isnan(float(v)) for v in weak_segmentation_ious(MAP, LEFT, NOTHING))  # empty ground truth


def test_frechet_distance_of_two_1d_gaussians():
    # N(0, 2) from [-1, 1], N(3, 8) from [1, 5]: (0 - 3)^2 + (sqrt 2 - sqrt 8)^2 = 9 + 2
    real, generated = torch.tensor([[-1.0], [1.0]]), torch.tensor([[1.0], [5.0]])
    assert frechet_distance(real, generated) == pytest.approx(11.0)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(frechet_distance(real[:1], generated))


def test_explain_predictions_stores_each_pairs_counterfactual_and_none_for_a_batch_without_pairs():
    class Shift(nn.Module):  # X_cf = X + 1 + the sample's first pixel, so each pair's counterfactual is its own
        def forward(self, images: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
            return images + 1 + images[:, :1, :1, :1]

    explain = ExplainPredictions(Counterfactual(mean_classifier(), Shift(), torch.zeros(2)), ["A", "B"], multi_label=True)
    images = torch.stack([torch.full((1, 4, 4), 0.0), torch.full((1, 4, 4), 2.0), torch.full((1, 4, 4), 5.0)])
    probs = torch.tensor([[0.9, 0.8], [0.1, 0.1], [0.1, 0.7]])  # pairs: image 0 twice (A, B), image 2 once (B)
    engine = SimpleNamespace(state=SimpleNamespace(output=[{"image": x, "pred": p} for x, p in zip(images, probs)]))
    explain(engine)
    stored = [item[OutputKeys.COUNTERFACTUAL] for item in engine.state.output]
    assert [len(cf) for cf in stored] == [2, 0, 1]
    assert torch.equal(stored[0], torch.ones(2, 1, 4, 4)) and torch.equal(stored[2], torch.full((1, 1, 4, 4), 11.0))
    engine.state.output = [{"image": images[1], "pred": probs[1]}]  # no pair: no counterfactual left from before
    explain(engine)
    assert engine.state.output[0][OutputKeys.COUNTERFACTUAL].shape == (0, 1, 4, 4)


def mean_classifier() -> nn.Module:
    """Logits (mean, -mean) of the pixels: a tiny multi-label classifier whose last linear layer sees the flat image."""
    network = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        network[1].weight.copy_(torch.stack([torch.full((16,), 1 / 16), torch.full((16,), -1 / 16)]))
        network[1].bias.zero_()
    return network


def explained_engine(counterfactual_value: float = -2.0) -> SimpleNamespace:
    """Two images as after SegXMaps: ``a`` explained for findings A and B (the MAP, the left region, counterfactual
    all ``counterfactual_value``), whose mask of A is the block and of B empty; ``b`` with no finding predicted."""
    masks = torch.zeros(2, 4, 4)
    masks[0] = BLOCK[0, 0]
    a = {OutputKeys.IMAGE: torch.zeros(1, 4, 4), OutputKeys.PRED: torch.tensor([0.9, 0.7]), OutputKeys.MAP: MAP.repeat(2, 1, 1, 1),
         OutputKeys.EXPLAINED_CLASSES: [0, 1], OutputKeys.REGION_MASK: LEFT.repeat(2, 1, 1, 1),
         OutputKeys.COUNTERFACTUAL: torch.full((2, 1, 4, 4), counterfactual_value), OutputKeys.ROWS: [{"finding": "A"}, {"finding": "B"}]}
    b = {OutputKeys.IMAGE: torch.zeros(1, 4, 4), OutputKeys.PRED: torch.tensor([0.1, 0.2]), OutputKeys.MAP: torch.zeros(0, 1, 4, 4),
         OutputKeys.EXPLAINED_CLASSES: [], OutputKeys.REGION_MASK: torch.zeros(0, 1, 4, 4, dtype=torch.bool),
         OutputKeys.COUNTERFACTUAL: torch.zeros(0, 1, 4, 4), OutputKeys.ROWS: [{"finding": ""}]}
    return SimpleNamespace(state=SimpleNamespace(batch=[{"finding_masks": masks}, {}], output=[a, b]))


def scored_rows(**options) -> list[dict]:
    engine = explained_engine()
    scores = CounterfactualScores(mean_classifier(), target_posterior(["A", "B"], "normal", True), multi_label=True,
                                  ground_truth=PairGroundTruth("finding_masks", ["A", "B"]), **options)
    scores(engine)
    return [row for item in engine.state.output for row in item[OutputKeys.ROWS]]


def test_the_handler_adds_target_probabilities_and_weak_segmentation_ious():
    network = mean_classifier()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    a_finding, b_finding, nothing = scored_rows()
    # target "no finding": 1 - p of the explained finding; on the counterfactual (all -2) the logits are (-2, 2)
    assert a_finding["target_probability"] == pytest.approx(0.1) and b_finding["target_probability"] == pytest.approx(0.3)
    assert a_finding["counterfactual_target_probability"] == pytest.approx(1 - 1 / (1 + math.exp(2)))
    assert b_finding["counterfactual_target_probability"] == pytest.approx(1 - 1 / (1 + math.exp(-2)))
    assert (a_finding["weak_iou_raw"], a_finding["weak_iou_segx"]) == pytest.approx((0.9, 6 / 9))
    assert math.isnan(b_finding["weak_iou_raw"])  # finding B has an empty mask
    assert nothing == {"finding": ""}  # no pair, no column
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())


@pytest.mark.parametrize("setting, values, expected", [("threshold", (0.25, 0.6), (0.9, 0.0)), ("opening", (0, 1), (0.9, 1.0))])
def test_threshold_and_opening_each_change_the_iou_columns(setting, values, expected):
    ious = [scored_rows(**{setting: value})[0]["weak_iou_raw"] for value in values]
    assert ious == pytest.approx(list(expected))


def test_the_handler_needs_the_counterfactuals():
    engine = explained_engine()
    del engine.state.output[0][OutputKeys.COUNTERFACTUAL]
    with pytest.raises(HandlerOrderError, match="ExplainPredictions with a counterfactual explainer"):
        CounterfactualScores(mean_classifier(), torch.zeros(2), multi_label=True)(engine)
    assert OutputKeys.COUNTERFACTUAL == COUNTERFACTUAL  # the explainer's extras are stored under the contract's key


def realism_batches() -> list[SimpleNamespace]:
    """Two batches of a normal image (no finding, not explained) and an abnormal one explained for finding A, its
    counterfactual constant: normal images -1 and 1, counterfactuals 1 and 5. The pairs' rows: one confident and
    moved by 0.85, one confident and moved by 0.35; weak segmentation IoU 0.9 / 0.5 raw and 0.6 / 0.7 SegX."""
    batches = []
    for normal, generated, (before, after, raw, segx) in ((-1.0, 1.0, (0.10, 0.95, 0.9, 0.6)), (1.0, 5.0, (0.15, 0.50, 0.5, 0.7))):
        row = {"finding": "A", "target_probability": before, "counterfactual_target_probability": after,
               "weak_iou_raw": raw, "weak_iou_segx": segx}
        items = [
            {OutputKeys.IMAGE: torch.full((1, 4, 4), normal), OutputKeys.MAP: torch.zeros(0, 1, 4, 4),
             OutputKeys.COUNTERFACTUAL: torch.zeros(0, 1, 4, 4), OutputKeys.ROWS: [{"finding": ""}]},
            {OutputKeys.IMAGE: torch.zeros(1, 4, 4), OutputKeys.MAP: MAP.clone(),
             OutputKeys.COUNTERFACTUAL: torch.full((1, 1, 4, 4), generated), OutputKeys.ROWS: [row]},
        ]
        labels = [{"label": torch.tensor([0.0, 0.0])}, {"label": torch.tensor([1.0, 0.0])}]
        batches.append(SimpleNamespace(state=SimpleNamespace(batch=labels, output=items)))
    return batches


def realism(tmp_path, batches, **options) -> dict:
    handler = CounterfactualRealism(tmp_path / "counterfactual.json", mean_classifier(), torch.zeros(2), **options)
    for engine in batches:
        handler(engine)
    handler.write()
    return json.loads((tmp_path / "counterfactual.json").read_text())


def test_realism_writes_validity_ious_and_the_frechet_distance(tmp_path):
    result = realism(tmp_path, realism_batches())
    assert result["validity"] == {"value": 0.5, "n_confident": 2, "n_pairs": 2, "confidence": 0.8, "tau": 0.8}
    assert result["weak_segmentation_iou"] == {"raw": {"mean": pytest.approx(0.7), "n": 2}, "segx": {"mean": pytest.approx(0.65), "n": 2}}
    # the penultimate features are the 16 pixels, each the 1-D case: 16 x 11
    realism_result = result["realism"]
    assert realism_result["frechet_distance"] == pytest.approx(176.0, rel=1e-4)
    assert (realism_result["features"], realism_result["n_real"], realism_result["n_counterfactual"]) == (CLASSIFIER_FEATURES, 2, 2)


def test_realism_uses_the_users_torchscript_network_and_says_so(tmp_path):
    class PixelMean(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(1, 2, 3))[:, None]

    path = tmp_path / "features.ts"
    torch.jit.script(PixelMean()).save(str(path))
    result = realism(tmp_path, realism_batches(), feature_network_file=str(path))["realism"]
    assert result["frechet_distance"] == pytest.approx(11.0)  # the mean pixel: the 1-D case, not the classifier's 176
    assert str(path) in result["features"] and result["feature_network_file"] == str(path)
    with pytest.raises(FileNotFoundError, match="realism_network_file"):
        CounterfactualRealism(tmp_path / "x.json", mean_classifier(), torch.zeros(2), feature_network_file=str(tmp_path / "none.ts"))


def test_undefined_realism_and_validity_are_null_with_the_reason(tmp_path):
    batches = realism_batches()[:1]  # one normal image, nothing confident
    batches[0].state.output[1][OutputKeys.ROWS][0]["target_probability"] = 0.5
    result = realism(tmp_path, batches)
    assert result["validity"]["value"] is None and "no confidently abnormal pair" in result["validity"]["note"]
    assert result["realism"]["frechet_distance"] is None and "got 1 and 1" in result["realism"]["note"]
    with pytest.raises(HandlerOrderError, match="CounterfactualScores"):
        realism(tmp_path, [SimpleNamespace(state=SimpleNamespace(batch=[{"label": torch.tensor([1.0, 0.0])}], output=[
            {**realism_batches()[0].state.output[1], OutputKeys.ROWS: [{"finding": "A"}]}]))])


def test_the_saver_shows_and_saves_the_counterfactual(tmp_path):
    heat = MAP.clone()
    item = {OutputKeys.IMAGE: torch.zeros(1, 4, 4), OutputKeys.MAP: heat, OutputKeys.SEGX_MAP: heat * LEFT,
            OutputKeys.SEGX_BINARY: BLOCK & LEFT, OutputKeys.REGION_MASK: LEFT, OutputKeys.ROWS: [{}]}
    strips = {}
    for name, extra in (("plain", {}), ("counterfactual", {OutputKeys.COUNTERFACTUAL: torch.ones(1, 1, 4, 4)})):
        engine = SimpleNamespace(state=SimpleNamespace(batch=[{"image_id": "s"}], output=[{**item, **extra}]))
        ExplanationSaver(tmp_path / name, mean=[0.0], std=[1.0], display_size=8)(engine)
        strips[name] = np.asarray(Image.open(tmp_path / name / "overlays" / "s.png").convert("RGB"))
    assert strips["plain"].shape[1] == len(PANELS) * 8 and not (tmp_path / "plain" / "counterfactuals").exists()
    strip = strips["counterfactual"]
    assert strip.shape[1] == len(COUNTERFACTUAL_PANELS) * 8 == 40
    body = strip[strip.shape[0] - 8:]
    assert (body[:, :8] == 0).all() and (body[:, 8:16] == 255).all()  # image (black) | counterfactual (white) | ...
    assert np.array_equal(body[:, 16:], strips["plain"][strips["plain"].shape[0] - 8:, 8:])  # then the same panels
    saved = np.asarray(Image.open(tmp_path / "counterfactual" / "counterfactuals" / "s.png"))
    assert saved.shape == (4, 4, 3) and (saved == 255).all()


def test_the_report_has_a_counterfactual_section(tmp_path):
    folder = write_folder(tmp_path, ROWS)
    (folder / "run.json").write_text(json.dumps({"explainer": "counterfactual", "counterfactual_target": "nv",
                                                 "counterfactual_threshold": 0.25, "counterfactual_opening": 1}))
    realism(folder, realism_batches())
    html = build_report(folder, n_bootstrap=20).read_text()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["counterfactual"]["validity"]["value"] == 0.5
    assert "<h2>Counterfactual</h2>" in html and "Target outcome: nv." in html
    for text in ("0.500", "2 confidently abnormal of 2 predictions", "τ = 0.800", "0.700 → 0.650", "map &gt; 0.250, opening 1",
                 "176.0", CLASSIFIER_FEATURES.replace("'", "&#x27;"), "the second panel is the image the generator"):
        assert text in html, text
    (folder / "counterfactual.json").unlink()
    assert "<h2>Counterfactual</h2>" not in build_report(folder, n_bootstrap=20).read_text()
    write_run_info(folder, {"explainer": "gradcam", "counterfactual_target": "nv", "realism_features": CLASSIFIER_FEATURES})
    assert "counterfactual_target" not in json.loads((folder / "run.json").read_text())  # a counterfactual run's only


def write_generator(root, chest_dir) -> None:
    """A generator file as its training's BestModelSaver writes it (a state dict recording the split and the classifier), of an
    untrained generator whose last layer is set to random weights: its counterfactuals differ from the images."""
    parser = ConfigParser()
    parser.read_config(str(CHEST_CONFIGS / "inference.yaml"))
    parser.update({"bundle_root": str(root), "dataset_dir": str(chest_dir), "device": "$torch.device('cpu')", **CHEST_TINY})
    generator = parser.get_parsed_content("generator_def")
    torch.manual_seed(0)
    nn.init.normal_(generator.unet.final_conv.weight, std=0.5)
    classifier = ClassifierRecord(parser.get_parsed_content("classifier_file"))
    state = WeightsWithClassifier(generator, parser.get_parsed_content("split_record"), classifier).state_dict()
    torch.save(state, parser.get_parsed_content("generator_file"))


def test_a_counterfactual_interpretation_of_the_chest_bundle(trained_chest_bundle, chest_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained_chest_bundle, root)
    write_generator(root, chest_dir)
    run_workflow(chest_workflow(root, chest_dir, CALIBRATE, explainer_name="counterfactual"))
    assert json.loads((root / "models" / "review_counterfactual.json").read_text())["localization"]["groups"]
    run_workflow(chest_workflow(root, chest_dir, INTERPRET, explainer_name="counterfactual"))
    run_workflow(chest_workflow(root, chest_dir, INTERPRET))  # Grad-CAM, to compare with
    out = root / "interpret" / "counterfactual_rethreshold"
    rows = [row for row in csv.DictReader(open(out / "samples.csv")) if row["finding"]]
    assert rows and all(0 <= float(row["counterfactual_target_probability"]) <= 1 for row in rows)
    assert any(row["weak_iou_raw"] not in ("", "nan") for row in rows)
    result = json.loads((out / "counterfactual.json").read_text())
    assert result["validity"]["n_pairs"] == len(rows) and result["realism"]["features"] == CLASSIFIER_FEATURES
    settings = json.loads((out / "run.json").read_text())
    assert (settings["counterfactual_target"], settings["counterfactual_threshold"], settings["counterfactual_opening"]) == ("normal", 0.25, 0)
    assert (out / "counterfactuals").is_dir() and "<h2>Counterfactual</h2>" in (out / "report.html").read_text()
    page = write_comparison(root, n_bootstrap=20)
    runs = json.loads(page.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"counterfactual_rethreshold", "gradcam_rethreshold"}
    assert runs["counterfactual_rethreshold"]["label"] == "densenet121 + counterfactual (target normal)"
    for run in runs.values():  # on the same pairs' masks, each map at its own tuned thresholds
        assert run["maps"]["ground_truth"] == "finding masks" and run["maps"]["auitc"]["n"] > 0 and run["pointing"]["n_fp"] is not None
    assert "densenet121 + counterfactual (target normal)" in page.read_text() and "densenet121 + gradcam" in page.read_text()
    assert "counterfactual_target" not in json.loads((root / "interpret" / "gradcam_rethreshold" / "run.json").read_text())
