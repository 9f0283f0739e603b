"""PatchNet in the chest bundle: trained into its own folder beside DenseNet121, resumed, explained by its patch logits
(raw and scaled) with SegX and SegU, compared with DenseNet121's Grad-CAM run, exported to TorchScript, and trained
in two processes."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ckpt_export

from conftest import CALIBRATE, CHEST_CONFIGS, CHEST_TINY, INTERPRET, PATCHNET, TRAIN_CLASSIFIER, chest_workflow, run_workflow
from test_distributed import torchrun

from segx_monai.report.comparison import write_comparison

def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def patchnet_bundle(tmp_path_factory, trained_chest_bundle, trained_patchnet_chest_bundle, chest_dir) -> Path:
    """A copy of the tiny chest bundle with its PatchNet (trained beside DenseNet121, raw maps calibrated), evaluated,
    and the interpretation runs the comparison reads: DenseNet121 Grad-CAM and PatchNet patch logits raw and scaled."""
    root = tmp_path_factory.mktemp("patchnet") / "bundle"
    shutil.copytree(trained_patchnet_chest_bundle, root)
    shutil.rmtree(root / "runs" / "classifier" / "eval", ignore_errors=True)  # DenseNet121 not evaluated (another test may have)
    # DenseNet121's weights were left alone by the PatchNet's training
    assert digest(root / "models" / "model.pt") == digest(trained_chest_bundle / "models" / "model.pt")
    run_workflow(chest_workflow(root, chest_dir, [*TRAIN_CLASSIFIER, "evaluate.yaml"], **PATCHNET))
    run_workflow(chest_workflow(root, chest_dir, INTERPRET))
    run_workflow(chest_workflow(root, chest_dir, CALIBRATE, patch_map="scaled", **PATCHNET))
    for patch_map in ("raw", "scaled"):
        run_workflow(chest_workflow(root, chest_dir, INTERPRET, patch_map=patch_map, **PATCHNET))
    return root


def samples(root: Path, run: str) -> list[dict]:
    with open(root / "interpret" / run / "samples.csv", newline="") as table:
        return list(csv.DictReader(table))


def test_patchnet_has_its_own_weights_thresholds_and_runs(patchnet_bundle):
    folder = patchnet_bundle / "models" / "patchnet"
    assert {"model.pt", "thresholds.json", "review_patch_logits_raw.json", "review_patch_logits_scaled.json"} <= {
        p.name for p in folder.iterdir()}
    assert (patchnet_bundle / "runs" / "classifier_patchnet" / "checkpoints").is_dir()
    state = torch.load(folder / "model.pt", weights_only=True)
    assert all(key.startswith("backbone.") for key in state)
    settings = json.loads((patchnet_bundle / "interpret" / "patchnet_patch_logits_raw_rethreshold" / "run.json").read_text())
    assert settings["classifier"] == "patchnet" and settings["patchnet"] == {"backbone": "densenet121", "grid": 2}
    assert settings["patch_map"] == "raw" and "gradcam_layer" not in settings


def test_patchnet_training_resumes_where_it_stopped(patchnet_bundle, chest_dir):
    checkpoints = patchnet_bundle / "runs" / "classifier_patchnet" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["resume_checkpoint_1.pt"]
    workflow = chest_workflow(patchnet_bundle, chest_dir, TRAIN_CLASSIFIER, max_epochs=2, **PATCHNET)
    workflow.initialize()
    trainer, started = workflow.parser.get_parsed_content("train#trainer"), []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    workflow.run()
    assert started == [2]  # epoch 1 was restored, not trained again
    assert [p.name for p in checkpoints.iterdir()] == ["resume_checkpoint_2.pt"]


def test_scaled_patch_maps_change_the_tuned_localisation_not_the_ranking(patchnet_bundle):
    raw, scaled = (samples(patchnet_bundle, f"patchnet_patch_logits_{m}_rethreshold") for m in ("raw", "scaled"))
    assert [r["image_id"] for r in raw] == [r["image_id"] for r in scaled]
    explained = [(a, b) for a, b in zip(raw, scaled) if a["finding"]]
    assert explained
    # the map times the prediction's probability: the same ranking (cIoU of the top q) ...
    assert all(float(a["ciou"]) == pytest.approx(float(b["ciou"]), abs=1e-6) for a, b in explained)
    # ... but a map whose maximum is the probability: thresholds tuned on validation below it
    tuned = {m: json.loads((patchnet_bundle / "models" / "patchnet" / f"review_patch_logits_{m}.json").read_text())
             ["localization"]["groups"] for m in ("raw", "scaled")}
    pairs = [(tuned["raw"][g]["threshold"]["raw"], tuned["scaled"][g]["threshold"]["raw"]) for g in tuned["raw"]]
    assert any(r is not None and s is not None and abs(r - s) > 1e-3 for r, s in pairs), pairs


def test_the_comparison_lists_every_run_raw_and_segx(patchnet_bundle):
    page = write_comparison(patchnet_bundle, n_bootstrap=50)
    comparison = json.loads(page.with_suffix(".json").read_text())
    runs = comparison["runs"]
    assert set(runs) == {"gradcam_rethreshold", "patchnet_patch_logits_raw_rethreshold", "patchnet_patch_logits_scaled_rethreshold"}
    # the PatchNet was evaluated on the test fold, this DenseNet121 was not: its AUROC is not invented
    assert 0 <= runs["patchnet_patch_logits_raw_rethreshold"]["classifier_auroc"] <= 1
    assert runs["gradcam_rethreshold"]["classifier_auroc"] is None
    for run in runs.values():
        assert run["maps"]["ground_truth"] == "finding masks"
        for variant in ("raw", "segx"):
            assert 0 <= run["maps"]["iou_at_q"][variant]["mean"] <= 1
    text = page.read_text()
    assert text.count("patchnet + patch_logits") == 4 and "densenet121 + gradcam" in text


def test_patchnet_exports_to_torchscript_with_equal_outputs(patchnet_bundle, tmp_path):
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(patchnet_bundle / "models" / "patchnet" / "model.pt"),
                meta_file=str(CHEST_CONFIGS / "metadata.json"), config_file=str(CHEST_CONFIGS / "inference.yaml"),
                bundle_root=str(patchnet_bundle), **PATCHNET)
    parser = ConfigParser()
    parser.read_config(str(CHEST_CONFIGS / "inference.yaml"))
    parser.update({"bundle_root": str(patchnet_bundle), **PATCHNET})
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(torch.load(patchnet_bundle / "models" / "patchnet" / "model.pt", weights_only=True))
    image = torch.rand(2, 1, CHEST_TINY["image_size"], CHEST_TINY["image_size"])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(image), network(image))


def test_two_process_patchnet_training(chest_dir, tmp_path):
    root = tmp_path / "ddp"
    out = torchrun(CHEST_CONFIGS, ["inference.yaml", "train_classifier.yaml", "multi_gpu_train.yaml"], "training",
                   bundle_root=root, dataset_dir=chest_dir, **{**CHEST_TINY, "batch_size": 4}, **PATCHNET)
    assert "best validation val_auroc" in out
    state = torch.load(root / "models" / "patchnet" / "model.pt", weights_only=True)
    assert all(key.startswith("backbone.") for key in state)  # the DDP wrapper's "module." is not saved


@pytest.mark.parametrize("setting, values", [("patch_shifts", (1, 2)), ("patch_grid", (2, 1)), ("patch_backbone", ("densenet121", "resnet50"))])
def test_each_patchnet_setting_changes_the_bundles_maps(setting, values):
    """Parsed from the chest bundle's configs with random weights: two values of each PatchNet setting give other maps."""
    maps = []
    for value in values:
        parser = ConfigParser()
        parser.read_config(str(CHEST_CONFIGS / "inference.yaml"))
        parser.update({**PATCHNET, "image_size": CHEST_TINY["image_size"], "device": "$torch.device('cpu')", setting: value})
        torch.manual_seed(0)
        explainer = parser.get_parsed_content("explainer")
        image = torch.rand(1, 1, CHEST_TINY["image_size"], CHEST_TINY["image_size"], generator=torch.Generator().manual_seed(1))
        maps.append(explainer(image, 0))
    assert not torch.allclose(maps[0], maps[1])
