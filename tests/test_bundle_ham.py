"""The ham_segx bundle's workflows as MONAI's tools run them: properties, training, resume, evaluation, inference."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from PIL import Image

from monai.bundle import ConfigParser

from conftest import HAM_CONFIGS, REPO, TINY, TRAIN_CONFIGS, TRAIN_SEGMENTER, ham_workflow, run_workflow
from segx_monai.data.fingerprint import saved_split
from segx_monai.handlers.checkpoint import latest_epoch_checkpoint
from segx_monai.networks.classifiers import build_classifier, load_pretrained


def test_training_writes_weights_that_load_safely(trained_ham_bundle):
    """Plain state dicts (what MONAI's and the Model Zoo's loaders take) that still name their split."""
    parser = ConfigParser()
    parser.read_config(str(HAM_CONFIGS / "inference.yaml"))
    for name, file, net_id in (("classifier", "model.pt", "network_def"), ("segmenter", "segmenter.pt", "segmenter_def")):
        saved = torch.load(trained_ham_bundle / "models" / file, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in saved.values()) and len(saved_split(saved)["fingerprint"]) == 64
        parser.get_parsed_content(net_id, instantiate=True).load_state_dict(saved, strict=True)
        assert latest_epoch_checkpoint(trained_ham_bundle / "runs" / name / "checkpoints").name == "resume_checkpoint_1.pt"


@pytest.mark.parametrize("network, metrics", [("classifier", ["test_macro_auroc", "test_balanced_accuracy", "test_confusion_matrix"]), ("segmenter", ["test_dice", "test_iou"])])
def test_evaluate_on_the_test_fold(trained_ham_bundle, ham_dir, network, metrics):
    workflow = run_workflow(ham_workflow(trained_ham_bundle, ham_dir, TRAIN_CONFIGS[network] + ["evaluate.yaml"]))
    state = workflow.parser.get_parsed_content("validate#evaluator").state
    n_test = len(json.loads(Path(workflow.parser.get_parsed_content("datalist")).read_text())["test"])
    assert state.iteration == -(-n_test // TINY["batch_size"])
    with open(trained_ham_bundle / "runs" / network / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # a real CSV: one value per row, every row complete
    assert rows and all(list(row) == ["metric", "class", "predicted_class", "value"] and None not in row.values() for row in rows)
    saved = {(r["metric"], r["class"], r["predicted_class"]): float(r["value"]) for r in rows}
    for metric in metrics:
        assert metric in state.metrics and any(key[0] == metric for key in saved)
    assert saved[(metrics[0], "", "")] == pytest.approx(float(state.metrics[metrics[0]]))
    if "test_confusion_matrix" in metrics:
        assert int(state.metrics["test_confusion_matrix"].sum()) == n_test
        matrix = {(t, p): v for (m, t, p), v in saved.items() if m == "test_confusion_matrix"}
        class_names = workflow.parser.get_parsed_content("class_names")
        assert len(matrix) == len(class_names) ** 2 and sum(matrix.values()) == n_test
        per_class = {c: v for (m, c, _), v in saved.items() if m == "test_auroc_per_class"}
        assert list(per_class) == class_names


def test_inference_workflow_properties_and_outputs(trained_ham_bundle, ham_dir, tmp_path):
    inputs = sorted((ham_dir / "HAM10000_images_part_1").glob("*.jpg"))[:5]
    out = tmp_path / "inference"
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, ["inference.yaml"], workflow_type="infer",
                              input=[str(p) for p in inputs], inference_dir=str(out)))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["image_id"] for r in rows] == [p.stem for p in inputs]
    for row, path in zip(rows, inputs):
        probs = [float(row[f"p_{c}"]) for c in ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")]
        assert abs(sum(probs) - 1) < 1e-4 and row["prediction"] in ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")
        mask = np.asarray(Image.open(out / "masks" / f"{path.stem}_mask.png"))
        assert mask.shape == np.asarray(Image.open(path)).shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert 0 <= float(row["ciou"]) <= 1 and row["review"] in ("0", "1")
        assert (out / "maps" / f"{path.stem}_segx.nii.gz").is_file() and (out / "overlays" / f"{path.stem}.png").is_file()


def test_killed_training_resumes_without_redoing_epochs(ham_dir, tmp_path):
    args = ["run", "training", "--config_file", str([str(HAM_CONFIGS / c) for c in TRAIN_SEGMENTER]), "--bundle_root", str(tmp_path),
            "--dataset_dir", str(ham_dir), "--image_size", "32", "--batch_size", "8", "--max_epochs", "3"]
    checkpoints = tmp_path / "runs" / "segmenter" / "checkpoints"
    process = subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while latest_epoch_checkpoint(checkpoints) is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    killed_at = int(latest_epoch_checkpoint(checkpoints).stem.rsplit("_", 1)[1])
    assert killed_at < 3, "the run finished before it could be killed"
    saved = torch.load(latest_epoch_checkpoint(checkpoints), map_location="cpu", weights_only=True)
    workflow = ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_segmenter.yaml"], max_epochs=3)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs_run.append(engine.state.epoch))
    workflow.run()
    assert epochs_run == list(range(killed_at + 1, 4))
    assert trainer.state.iteration == saved["trainer"]["iteration"] + (3 - killed_at) * trainer.state.epoch_length
    assert latest_epoch_checkpoint(checkpoints).name == "resume_checkpoint_3.pt"


def test_gpu_saved_checkpoint_loads_on_cpu(tmp_path, monkeypatch):
    network = build_classifier(num_classes=7)
    path = tmp_path / "gpu_saved.pt"
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")  # as torch.save writes CUDA tensors
    torch.save({"model": network.state_dict()}, path)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    fresh = load_pretrained(build_classifier(num_classes=7), path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), network.state_dict().values()))


def test_pretrained_from_a_local_file_skips_the_other_task_head(tmp_path):
    source = build_classifier(num_classes=1000)
    torchvision_style = {k.replace(".layers.", ".") if "denselayer" in k else k: v for k, v in source.state_dict().items()}
    torch.save(torchvision_style, tmp_path / "imagenet.pth")
    network = build_classifier(num_classes=7, pretrained=str(tmp_path / "imagenet.pth"))
    assert torch.equal(network.features.conv0.weight, source.features.conv0.weight)
    assert torch.equal(network.features.denseblock1.denselayer1.layers.conv1.weight, source.features.denseblock1.denselayer1.layers.conv1.weight)
    assert network.class_layers.out.weight.shape == (7, 1024)
    with pytest.raises(ValueError, match="no weight matches"):
        load_pretrained(build_classifier(num_classes=7), _save(tmp_path / "other.pt", {"foo": torch.zeros(3)}))


def test_pretrained_download_offline_gives_a_clear_error(monkeypatch):
    import monai.networks.nets.densenet as densenet

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(densenet, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="pretrained=<path to a weights file>"):
        build_classifier(pretrained=True)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("flag, value", [("resume", "false"), ("pretrained", "true"), ("pretrained", "False")])
def test_a_boolean_given_as_text_on_the_command_line_is_refused(ham_dir, tmp_path, flag, value):
    """`--resume false` reaches the config as the text 'false' (truthy): refused with the spelling that works."""
    workflow = ham_workflow(tmp_path, ham_dir, ["inference.yaml", "train_classifier.yaml"], **{flag: value})
    with pytest.raises(Exception) as info:
        workflow.initialize()
        workflow.run()
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any(f"--{flag} {value.title()}" in message for message in chain), chain
