"""Shared fixtures: a tiny synthetic HAM10000 folder and bundle workflows trained on it with tiny overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from segx_monai.data.synthetic_derm import generate_ham_like

REPO = Path(__file__).resolve().parents[1]
HAM_CONFIGS = REPO / "bundles" / "ham_segx" / "configs"

torch.set_num_threads(2)

# 4x4 golden-test helpers shared by the metric tests
RAMP = torch.arange(16.0).view(1, 1, 4, 4)  # rows 0-3, 4-7, 8-11, 12-15
EMPTY = torch.zeros(1, 1, 4, 4, dtype=torch.bool)


def block(rows, cols):
    """Boolean (1, 1, 4, 4) image, True on the given row and column slices."""
    image = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    image[0, 0, rows, cols] = True
    return image

# tiny settings for every HAM workflow in the tests: small images, one epoch, small batches, a narrow U-Net
TINY = {"image_size": 32, "max_epochs": 1, "batch_size": 8, "num_workers": 0, "inference_batch_size": 8, "shap_samples": 4, "n_baselines": 4,
        "sanity_checks": False}  # on in one interpretation test (test_interpret_ham), small

# each workflow's configs, in the order they compose (inference.yaml is every bundle's shared, standalone base)
INFER = ["inference.yaml"]
TRAIN_CLASSIFIER = ["inference.yaml", "train_classifier.yaml"]
TRAIN_SEGMENTER = ["inference.yaml", "train_segmenter.yaml"]
INTERPRET = ["inference.yaml", "interpret.yaml"]
CALIBRATE = ["inference.yaml", "interpret.yaml", "calibrate.yaml"]  # the review threshold, on the validation fold
TRAIN_CONFIGS = {"classifier": TRAIN_CLASSIFIER, "segmenter": TRAIN_SEGMENTER}


def bundle_workflow(configs_dir: Path, tiny: dict, bundle_root: Path, dataset_dir: Path, configs: list[str], workflow_type: str | None = None, run_id: str = "run", **overrides) -> ConfigWorkflow:
    """A ConfigWorkflow of the bundle in ``configs_dir`` on ``dataset_dir`` writing to ``bundle_root``, with ``tiny``
    settings; a "train" workflow when a train config is among ``configs``, else "infer" (the properties checked)."""
    if workflow_type is None:
        workflow_type = "train" if any(c.startswith("train_") for c in configs) else "infer"
    return ConfigWorkflow(
        config_file=[str(configs_dir / c) for c in configs],
        meta_file=str(configs_dir / "metadata.json"),
        logging_file=str(configs_dir / "logging.conf"),
        workflow_type=workflow_type,
        run_id=run_id,
        bundle_root=str(bundle_root),
        dataset_dir=str(dataset_dir),
        **{**tiny, **overrides},
    )


def cli_settings(configs_dir: Path, configs: list[str], settings: dict) -> dict:
    """The ``settings`` that ``configs`` define (``python -m monai.bundle run`` refuses an override of no config key)."""
    parser = ConfigParser()
    parser.read_config([str(configs_dir / c) for c in configs])
    return {key: value for key, value in settings.items() if key in parser}


def ham_workflow(*args, **overrides) -> ConfigWorkflow:
    """A workflow of the HAM bundle with the tiny settings (arguments as :func:`bundle_workflow` after ``tiny``)."""
    return bundle_workflow(HAM_CONFIGS, TINY, *args, **overrides)


def run_workflow(workflow: ConfigWorkflow) -> ConfigWorkflow:
    """initialize, check the bundle properties, run and finalize, as MONAI's tools and MONAI Label do."""
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="session")
def ham_dir(tmp_path_factory) -> Path:
    """A tiny synthetic HAM10000 in the real layout (80 images, 64x48)."""
    return generate_ham_like(tmp_path_factory.mktemp("ham") / "HAM10000", n_images=80, image_size=(64, 48), seed=1)


@pytest.fixture(scope="session")
def trained_ham_bundle(tmp_path_factory, ham_dir) -> Path:
    """A bundle root with a classifier and a segmenter trained one epoch on ``ham_dir``, and Grad-CAM's review
    threshold calibrated on the validation fold."""
    root = tmp_path_factory.mktemp("ham_bundle")
    for configs in (TRAIN_CLASSIFIER, TRAIN_SEGMENTER, CALIBRATE):
        run_workflow(ham_workflow(root, ham_dir, configs))
    return root


CHEST_CONFIGS = REPO / "bundles" / "chestx_segx" / "configs"
CHEST_TINY = {**TINY, "image_size": 64}


def chest_workflow(*args, **overrides) -> ConfigWorkflow:
    """A workflow of the chest bundle with the tiny settings (arguments as :func:`bundle_workflow` after ``tiny``)."""
    return bundle_workflow(CHEST_CONFIGS, CHEST_TINY, *args, **overrides)


@pytest.fixture(scope="session")
def chest_dir(tmp_path_factory) -> Path:
    """A tiny synthetic ChestX-Det10 in the real layout, with lung masks, polygons and DICOM copies (64x64)."""
    from segx_monai.data.synthetic_chest import generate_chestx_like

    return generate_chestx_like(tmp_path_factory.mktemp("chest") / "ChestX-Det10", n_train=60, n_test=20, image_size=64, seed=1)


@pytest.fixture(scope="session")
def trained_chest_bundle(tmp_path_factory, chest_dir) -> Path:
    """A chest bundle root with a classifier (and its thresholds) and a lung segmenter trained one epoch, and
    Grad-CAM's review threshold calibrated on the validation fold."""
    root = tmp_path_factory.mktemp("chest_bundle")
    for configs in (TRAIN_CLASSIFIER, TRAIN_SEGMENTER, CALIBRATE):
        run_workflow(chest_workflow(root, chest_dir, configs))
    return root


PATCHNET = {"classifier_name": "patchnet", "patch_grid": 2, "explainer_name": "patch_logits"}  # 32 px patches at 64 px


@pytest.fixture(scope="session")
def trained_patchnet_chest_bundle(tmp_path_factory, trained_chest_bundle, chest_dir) -> Path:
    """A copy of the tiny chest bundle with a PatchNet trained one epoch beside its DenseNet121 (models/patchnet/),
    and its raw patch logits calibrated on the validation fold (models/patchnet/review_patch_logits_raw.json).
    Read-only for the tests: copy it to add runs."""
    root = tmp_path_factory.mktemp("patchnet_bundle") / "chestx_segx"
    shutil.copytree(trained_chest_bundle, root)
    run_workflow(chest_workflow(root, chest_dir, TRAIN_CLASSIFIER, **PATCHNET))
    run_workflow(chest_workflow(root, chest_dir, CALIBRATE, **PATCHNET))
    return root
