"""One source for each setting: the bundles' configs compose the shared inference.yaml instead of copying it, and
the workflows that share a setting behave alike (inference and interpretation give one map for one image)."""

from __future__ import annotations

import csv
import inspect
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import (
    CALIBRATE, CHEST_CONFIGS, HAM_CONFIGS, INFER, INTERPRET, REPO, TRAIN_CLASSIFIER, TRAIN_SEGMENTER, ham_workflow, run_workflow,
)
from segx_monai.bundle.errors import root_cause
from segx_monai.data import splits
from segx_monai.data.synthetic_derm import generate_ham_like, plan_ham_like
from segx_monai.explainers import default_target_layer
from segx_monai.handlers.contract import Columns
from segx_monai.handlers.segx import SegXMaps
from segx_monai.handlers.writers import MaskWriter

BUNDLES = {"ham_segx": HAM_CONFIGS, "chestx_segx": CHEST_CONFIGS}
BLOCK_LINES = 4  # a YAML block of this many lines or more, written twice, is a copy


def _blocks(node, where: str, found: dict) -> None:
    """Every mapping and list under ``node`` as its canonical YAML text -> the places it is written."""
    if isinstance(node, (dict, list)):
        text = yaml.safe_dump(node, sort_keys=True)
        if text.count("\n") >= BLOCK_LINES:
            found[text].append(where)
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            _blocks(value, f"{where}#{key}", found)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_no_block_is_written_twice_in_a_bundles_configs(bundle):
    found = defaultdict(list)
    for path in sorted(BUNDLES[bundle].glob("*.yaml")):
        for key, value in (yaml.safe_load(path.read_text()) or {}).items():
            _blocks(value, f"{path.name}:{key}", found)
    assert [places for places in found.values() if len(places) > 1] == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_overlays_change_what_they_redefine(bundle):
    """A key an overlay sets again with the value inference.yaml already gives it is a copy waiting to drift."""
    base = yaml.safe_load((BUNDLES[bundle] / "inference.yaml").read_text())
    copies = [f"{path.name}: {key}" for path in sorted(BUNDLES[bundle].glob("*.yaml")) if path.name != "inference.yaml"
              for key, value in (yaml.safe_load(path.read_text()) or {}).items() if key in base and base[key] == value]
    assert copies == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_one_region_threshold_reaches_inference_and_interpretation(bundle):
    """The region threshold was `region_threshold` in inference and `mask_threshold` in interpretation."""
    for configs in (INFER, INTERPRET):
        parser = ConfigParser()
        parser.read_config([str(BUNDLES[bundle] / c) for c in configs])
        assert "mask_threshold" not in parser
        parser.update({"region_threshold": 0.3, "device": "$torch.device('cpu')", "finding_thresholds": [0.5] * 10,
                       "review_threshold": 0.1})  # no trained bundle, so no calibration to read
        handlers = parser.get_parsed_content("explanation_handlers") + parser.get_parsed_content("writers")
        assert [h.kwargs["mask_threshold"] for h in handlers if isinstance(h, SegXMaps)] == [0.3]
        assert [h.threshold for h in handlers if isinstance(h, MaskWriter)] == ([0.3] if configs == INFER else [])


def test_split_settings_have_one_source():
    """The configs, the indexer and the synthetic set's generator (which places artefacts by the split) agree."""
    parser = ConfigParser()
    parser.read_config(str(HAM_CONFIGS / "inference.yaml"))
    assert [parser.get_parsed_content(k) for k in ("split_seed", "val_fraction", "test_fraction")] == [splits.SPLIT_SEED, splits.VAL_FRACTION, splits.TEST_FRACTION]
    defaults = inspect.signature(plan_ham_like).parameters
    assert [defaults[k].default for k in ("split_seed", "val_fraction", "test_fraction")] == [splits.SPLIT_SEED, splits.VAL_FRACTION, splits.TEST_FRACTION]
    for bundle in BUNDLES:
        for name in ("train_classifier.yaml", "train_segmenter.yaml"):
            assert not {"split_seed", "val_fraction", "test_fraction", "datalist"} & set(yaml.safe_load((BUNDLES[bundle] / name).read_text()))


@pytest.mark.parametrize("bundle, layer", [("ham_segx", "features.denseblock2"), ("chestx_segx", "features.denseblock3")])
def test_gradcam_explains_an_8x8_map_of_densenet121_at_the_default_image_size(bundle, layer):
    """The default layer suits the default (the demo's) image_size, so the demo's runs, the standalone inference and
    the MONAI Label app, none of which names a layer, read the review file the calibration wrote; DenseNet121's final
    feature map would be 2x2 / 4x4 there, and stays the default of the other classifiers."""

    def parsed(configs: list[str], **overrides) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config([str(BUNDLES[bundle] / c) for c in configs])
        parser.update(overrides)
        return parser

    calibrating, inferring = parsed(CALIBRATE), parsed(INFER)
    assert inferring.get_parsed_content("review_settings")["gradcam_layer"] == layer
    assert calibrating.get_parsed_content("review_settings") == inferring.get_parsed_content("review_settings")
    assert parsed(INTERPRET).get_parsed_content("run_info#gradcam_layer") == layer  # run.json
    explainer = inferring.get_parsed_content("explainer")
    network, size = explainer.model.eval(), inferring.get_parsed_content("image_size")
    image = torch.zeros(1, network.features.conv0.in_channels, size, size, device=next(network.parameters()).device)
    assert tuple(explainer.layer_activations(image)[1].shape[2:]) == (8, 8)
    assert explainer.target_layer is not default_target_layer(network)
    final = parsed(INFER, gradcam_layer=None).get_parsed_content("explainer")
    assert final.target_layer is default_target_layer(final.model)
    assert tuple(final.layer_activations(image)[1].shape[2:]) == (size // 32, size // 32)
    for name in ("resnet50", "efficientnet-b0", "patchnet"):
        settings = parsed(CALIBRATE, classifier_name=name).get_parsed_content("review_settings")
        assert settings["gradcam_layer"] is None, name
        assert settings == parsed(INFER, classifier_name=name).get_parsed_content("review_settings")


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["image_id"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("explainer", ["gradcam", "gradient_shap"])
def test_inferring_and_interpreting_give_the_same_maps_and_scores(trained_ham_bundle, ham_dir, tmp_path, explainer):
    """GradientSHAP drew against zero baselines in inference and saved training images in interpretation."""
    settings = {"explainer_name": explainer, "inference_batch_size": 4}
    if explainer != "gradcam":  # the fixture calibrates Grad-CAM's review threshold only
        settings["review_threshold"] = 0.1
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, INFER, inference_dir=str(tmp_path / "inferred"), **settings))
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, INTERPRET, interpret_dir=str(tmp_path / "interpreted"), **settings))
    inferred, interpreted = _rows(tmp_path / "inferred" / "predictions.csv"), _rows(tmp_path / "interpreted" / "samples.csv")
    assert set(inferred) == set(interpreted) and len(inferred) > 4
    for image_id, row in inferred.items():
        for column in (Columns.PREDICTION, Columns.PROBABILITY, Columns.CIOU, Columns.CAUITC, Columns.REVIEW):
            assert row[column] == interpreted[image_id][column], (image_id, column)
        for kind in ("raw", "segx"):
            a, b = (nib.load(tmp_path / out / "maps" / f"{image_id}_{kind}.nii.gz").get_fdata() for out in ("inferred", "interpreted"))
            np.testing.assert_array_equal(a, b)


def test_a_gradcam_run_reads_no_gradient_shap_baselines(trained_ham_bundle, ham_dir, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(trained_ham_bundle, root, ignore=shutil.ignore_patterns("runs", "interpret", "inference"))
    baselines = root / "models" / "shap_baselines.pt"
    assert torch.load(baselines, weights_only=True).shape[0] == 4  # drawn by the classifier's training (n_baselines)
    baselines.unlink()
    run_workflow(ham_workflow(root, ham_dir, INTERPRET, explainer_name="gradcam", interpret_dir=str(tmp_path / "gradcam")))
    assert not baselines.exists()
    with pytest.raises(Exception) as info:
        run_workflow(ham_workflow(root, ham_dir, INTERPRET, explainer_name="gradient_shap", review_threshold=0.1, interpret_dir=str(tmp_path / "shap")))
    assert isinstance(root_cause(info.value), FileNotFoundError) and str(baselines) in str(root_cause(info.value))


def test_a_segmenter_trained_with_other_features_is_loaded_by_inference(trained_ham_bundle, ham_dir, tmp_path):
    """segmenter_def in inference and interpretation ignored segmenter_features, so such a segmenter did not load."""
    root = tmp_path / "bundle"
    shutil.copytree(trained_ham_bundle, root, ignore=shutil.ignore_patterns("runs", "interpret", "inference"))
    narrow = {"segmenter_features": [4, 4, 8, 8, 16, 4]}
    run_workflow(ham_workflow(root, ham_dir, TRAIN_SEGMENTER, resume=False, **narrow))
    out = tmp_path / "inferred"
    workflow = run_workflow(ham_workflow(root, ham_dir, INFER, inference_dir=str(out), **narrow))
    assert workflow.parser.get_parsed_content("segmenter").final_conv.in_channels == 4
    assert len(_rows(out / "predictions.csv")) > 0


@pytest.mark.slow
def test_the_standalone_inference_config_runs_from_the_bundle_folder(tmp_path):
    """The Model Zoo's way: `configs/inference.yaml` alone, from the bundle's own folder, no override (the bundle
    trained there first, composing its train configs after inference.yaml)."""
    bundle = tmp_path / "ham_segx"
    shutil.copytree(REPO / "bundles" / "ham_segx" / "configs", bundle / "configs")
    generate_ham_like(bundle / "data" / "synthetic", n_images=60, image_size=(64, 48), seed=2)
    tiny = ["--image_size", "32", "--max_epochs", "1", "--batch_size", "8", "--n_baselines", "4"]
    for configs in (TRAIN_CLASSIFIER, TRAIN_SEGMENTER):
        command = ["run", "training", "--config_file", str([f"configs/{c}" for c in configs]), *tiny]
        done = subprocess.run([sys.executable, "-m", "monai.bundle", *command], cwd=bundle, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in (bundle / "models").iterdir()} >= {"model.pt", "segmenter.pt", "shap_baselines.pt"}
    calibrate = ["run", "calibrating", "--config_file", str([f"configs/{c}" for c in CALIBRATE])]  # the review threshold
    done = subprocess.run([sys.executable, "-m", "monai.bundle", *calibrate], cwd=bundle, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", "configs/inference.yaml"],
                          cwd=bundle, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.yaml"), workflow_type="infer", bundle_root=str(bundle))
    workflow.initialize()
    assert workflow.check_properties() == []
    test_images = [i["image"] for i in workflow.parser.get_parsed_content("fold_items")("test")]
    assert set(_rows(bundle / "inference" / "predictions.csv")) == {Path(i).stem for i in test_images}
