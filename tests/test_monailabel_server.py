"""MONAI Label integration: a real server, in MONAI Label's own environment (scripts/monailabel_env.sh, built once per
machine), serving tiny trained bundles on 127.0.0.1; its label images and JSON are checked against the ground truth
and against the bundles' own inference on the same studies. Every step is bounded in time and the server is always
stopped, also when a check fails.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from conftest import (CALIBRATE, CHEST_CONFIGS, CHEST_TINY, HAM_CONFIGS, PATCHNET, REPO, TINY,
                      bundle_workflow, run_workflow)

sys.path.insert(0, str(REPO / "monailabel_app"))
from local_server import ServerError, local_server  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ENV_TIMEOUT = 1500  # s: a fresh MONAI Label environment (about 8 GB) takes a few minutes to install
START_TIMEOUT = 300  # s: until /info/ answers
TRAIN_TIMEOUT = 600  # s: one-epoch training in a subprocess of the server
TINY_SETTINGS = {"ham_segx": TINY, "chestx_segx": CHEST_TINY}
CONFIGS = {"ham_segx": HAM_CONFIGS, "chestx_segx": CHEST_CONFIGS}
MASK_SUFFIX = {"ham_segx": "_mask", "chestx_segx": "_lungs"}  # the bundles' inference masks, <image id><suffix>.png
TRAIN_STUDIES = {"ham_segx": "ham_*", "chestx_segx": "chest_*"}  # demo_studies.py names studies <prefix>_<image id>
# the studies of each kind the checks run on: a dermoscopy JPEG, a chest X-ray PNG and its DICOM copy
STUDY_KINDS = [("ham_segx", ".jpg"), ("chestx_segx", ".png"), ("chestx_segx", ".dcm")]


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_ham_bundle, trained_chest_bundle, ham_dir, chest_dir):
    """Copies of the tiny bundles (training overwrites their segmenter), a studies folder of their test images (some
    labelled) with two bad studies, the datasets, and the bundle roots."""
    work = tmp_path_factory.mktemp("monailabel")
    roots = {name: work / name for name in CONFIGS}
    shutil.copytree(trained_ham_bundle, roots["ham_segx"])
    shutil.copytree(trained_chest_bundle, roots["chestx_segx"])
    datasets = {"ham_segx": ham_dir, "chestx_segx": chest_dir}
    studies = work / "studies"
    command = [sys.executable, str(REPO / "monailabel_app" / "demo_studies.py"), "--out", str(studies), "--images", "3", "--labels", "3", "--dicom", "1"]
    for name, root in roots.items():
        command += ["--bundle", name, str(root), str(datasets[name])]
    subprocess.run(command, check=True, timeout=300)
    manifest = json.loads((studies / "segx_studies.json").read_text())
    (studies / "bad_note.png").write_text("a clinical note, not an image")
    dicom = next(s for s in manifest if s.endswith(".dcm"))
    no_pixels = pydicom.dcmread(studies / dicom)
    del no_pixels.PixelData
    no_pixels.save_as(studies / "bad_nopixels.dcm")
    outside = next(p for p in sorted(chest_dir.rglob("*.png")) if not p.is_relative_to(studies))  # an image the server can read
    (studies / "bad_link.png").symlink_to(outside)
    return {"roots": roots, "datasets": datasets, "studies": studies, "manifest": manifest, "outside": outside}


@pytest.fixture(scope="module")
def monailabel_python() -> Path:
    """The python of MONAI Label's own environment, built by scripts/monailabel_env.sh when missing."""
    built = subprocess.run(["bash", str(REPO / "scripts" / "monailabel_env.sh")], capture_output=True, text=True, timeout=ENV_TIMEOUT)
    if built.returncode:
        pytest.fail(f"the MONAI Label environment could not be built:\n{built.stderr[-4000:]}")
    return Path(built.stdout.strip().splitlines()[-1]) / "bin" / "python"


@pytest.fixture(scope="module")
def server(served, monailabel_python, tmp_path_factory):
    """The MONAI Label server on a free loopback port, started by scripts/monailabel.sh and always stopped."""
    options = []
    for name, root in served["roots"].items():
        overrides = {"bundle_root": str(root), "dataset_dir": str(served["datasets"][name]), "image_size": TINY_SETTINGS[name]["image_size"]}
        options += ["--conf", f"{name}_overrides", json.dumps(overrides), "--conf", f"{name}_train_studies", TRAIN_STUDIES[name]]
    log = tmp_path_factory.mktemp("monailabel_log") / "server.log"
    try:
        with local_server(served["studies"], options, log, START_TIMEOUT) as client:
            yield client
    except ServerError as err:
        pytest.fail(str(err))


def infer(server, model: str, study: str) -> tuple[int, dict | str, np.ndarray | None]:
    """``(status, JSON result or error detail, label image as an array)``."""
    status, result, image = server.infer(model, study)
    return status, result, None if image is None else np.asarray(Image.open(io.BytesIO(image)))


@pytest.fixture(scope="module")
def bundle_results(served, tmp_path_factory):
    """The bundles' own inference (inference.yaml, in this environment) on the studies: ``{study: (CSV rows, mask)}``."""
    out = tmp_path_factory.mktemp("bundle_inference")
    results = {}
    for name in CONFIGS:
        studies = [s for s, info in served["manifest"].items() if info["bundle"] == name]
        inference_dir = out / name
        run_workflow(bundle_workflow(CONFIGS[name], TINY_SETTINGS[name], served["roots"][name], served["datasets"][name],
                                     ["inference.yaml"], workflow_type="infer",
                                     input=[str(served["studies"] / s) for s in studies], inference_dir=str(inference_dir)))
        rows = list(csv.DictReader(open(inference_dir / "predictions.csv")))
        for study in studies:
            stem = Path(study).stem
            mask = np.asarray(Image.open(inference_dir / "masks" / f"{stem}{MASK_SUFFIX[name]}.png")) > 0
            results[study] = ([r for r in rows if r["image_id"] == stem], mask)
    return results


def study_of(served, bundle: str, suffix: str) -> str:
    return next(s for s, info in served["manifest"].items() if info["bundle"] == bundle and s.endswith(suffix))


def ground_truth(served, study: str) -> np.ndarray:
    return np.asarray(Image.open(served["manifest"][study]["mask"]).convert("L")) > 127


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


# run in MONAI Label's environment: each bundle's SegX task as the app builds it (which reads the review file), and what
# it read, as JSON in argv[1]; argv[2]: the studies folder; argv[3]: the app's conf
APP_SEGX_TASKS = """
import json, sys
from pathlib import Path
sys.path.insert(0, "monailabel_app")
from main import BUNDLES_DIR
from segx_tasks import Bundle, SegXTask
conf, found = json.loads(sys.argv[3]), {}
for name in ("ham_segx", "chestx_segx"):
    task = SegXTask(Bundle.from_conf(name, BUNDLES_DIR, conf), Path(sys.argv[2]))
    found[name] = {"review_settings": task.parser.get_parsed_content("review_settings"), "review_threshold": task.segu.review_threshold}
Path(sys.argv[1]).write_text(json.dumps(found))
"""


def test_the_app_reads_the_review_file_of_a_calibration_with_the_bundles_defaults(monailabel_python, trained_ham_bundle, trained_chest_bundle, ham_dir, chest_dir, tmp_path):
    """The SegX task, given only the bundle root, data and image size, explains with the calibrating workflow's settings
    (Grad-CAM's default layer among them), so it accepts the review file; no server needed."""
    roots = {"ham_segx": trained_ham_bundle, "chestx_segx": trained_chest_bundle}
    datasets = {"ham_segx": ham_dir, "chestx_segx": chest_dir}
    overrides = {name: {"bundle_root": str(roots[name]), "dataset_dir": str(datasets[name]), "image_size": TINY_SETTINGS[name]["image_size"]} for name in CONFIGS}
    conf = {f"{name}_overrides": json.dumps(overrides[name]) for name in CONFIGS}
    out = tmp_path / "app.json"
    done = subprocess.run([str(monailabel_python), "-c", APP_SEGX_TASKS, str(out), str(tmp_path), json.dumps(conf)], cwd=REPO,
                          capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    app = json.loads(out.read_text())
    for name, layer in (("ham_segx", "features.denseblock2"), ("chestx_segx", "features.denseblock3")):
        calibrating = ConfigParser()  # the fixture's calibrating workflow (conftest), with the tiny settings
        calibrating.read_config([str(CONFIGS[name] / c) for c in CALIBRATE])
        calibrating.update({**TINY_SETTINGS[name], **overrides[name]})
        assert app[name]["review_settings"] == json.loads(json.dumps(calibrating.get_parsed_content("review_settings")))
        assert app[name]["review_settings"]["gradcam_layer"] == layer
        calibrated = json.loads((roots[name] / "models" / "review_gradcam.json").read_text())
        assert app[name]["review_threshold"] == calibrated["scores"][calibrating.get_parsed_content("certainty_score")]["threshold"]



# run in MONAI Label's environment: the app's chest X-ray tasks as it builds them with argv[3], its conf; the SegX task
# run on the studies argv[4:] of the datastore argv[2]; to the folder argv[1]: the served weights and what the
# segmenter's training would overwrite (app.pt; the weights as served, loaded when a study is evaluated), each study's
# raw map before SegX (maps.pt), result and label (results.json)
APP_PATCHNET = """
import json, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
sys.path.insert(0, "monailabel_app")
from main import BUNDLES_DIR
from segx_tasks import Bundle, RegionTask, SegmenterTrainTask, SegXTask
from segx_monai.handlers.contract import OutputKeys
out, studies, conf = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
bundle = Bundle.from_conf("chestx_segx", BUNDLES_DIR, conf)
RegionTask(bundle, studies)
task = SegXTask(bundle, studies)
maps, results = {}, {}
for study in sys.argv[4:]:
    label, result = task({"image": study, "device": "cpu"})
    maps[study] = task.evaluator.state.output[0][OutputKeys.MAP].float().cpu()
    results[study] = {"result": result, "label_shape": list(np.asarray(Image.open(label)).shape), "label_values": np.unique(np.asarray(Image.open(label))).tolist()}
torch.save(maps, out / "maps.pt")
torch.save({"weights": task.evaluator.network.state_dict(), "path": task.get_path(), "review_file": task.parser.get_parsed_content("review_file"),
            "description": task.description, "segmenter_checkpoint": str(SegmenterTrainTask(bundle, conf).checkpoint)}, out / "app.pt")
(out / "results.json").write_text(json.dumps(results))
"""


def test_the_app_serves_a_patchnet_with_its_own_weights_maps_and_review_file(monailabel_python, trained_patchnet_chest_bundle, chest_dir, tmp_path):
    """With PatchNet overrides the SegX task loads models/patchnet/model.pt (not DenseNet121's models/model.pt),
    explains by the blocky patch logits (one value per 32 px patch before SegX) and flags review by the PatchNet's own
    calibrated threshold; the segmenter's training still writes the segmenter; no server needed."""
    root, models = trained_patchnet_chest_bundle, trained_patchnet_chest_bundle / "models" / "patchnet"
    overrides = {"bundle_root": str(root), "dataset_dir": str(chest_dir), "image_size": CHEST_TINY["image_size"], **PATCHNET}
    parser = ConfigParser()
    parser.read_config(str(CHEST_CONFIGS / "inference.yaml"))
    parser.update(overrides)
    studies = parser.get_parsed_content("input")[:4]  # test-fold images of the datastore, the dataset folder
    done = subprocess.run([str(monailabel_python), "-c", APP_PATCHNET, str(tmp_path), str(chest_dir),
                           json.dumps({"chestx_segx_overrides": json.dumps(overrides)}), *studies],
                          cwd=REPO, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    app = torch.load(tmp_path / "app.pt", weights_only=True)
    assert Path(app["path"]) == models / "model.pt" and Path(app["review_file"]) == models / "review_patch_logits_raw.json"
    assert Path(app["segmenter_checkpoint"]) == root / "models" / "segmenter.pt"
    assert "by patchnet with SegX map of patch_logits_raw" in app["description"]
    saved = torch.load(models / "model.pt", weights_only=True)
    assert set(app["weights"]) == set(saved) and all(key.startswith("backbone.") for key in saved)
    assert all(torch.equal(app["weights"][key], saved[key]) for key in saved)
    calibrated = json.loads((models / "review_patch_logits_raw.json").read_text())
    thresholds = json.loads((models / "thresholds.json").read_text())["thresholds"]
    maps, results, explained = torch.load(tmp_path / "maps.pt", weights_only=True), json.loads((tmp_path / "results.json").read_text()), 0
    for study in studies:
        result = results[study]["result"]
        assert result["classifier_name"] == "patchnet" and result["explainer_label"] == "patch_logits_raw"
        assert result["review_threshold"] == calibrated["scores"][result["certainty_score"]]["threshold"]
        assert result["thresholds"] == pytest.approx(thresholds)
        assert result["prediction"] == [f for f, p in result["probabilities"].items() if p >= thresholds[f]]
        for scores in result["segu"]:
            assert scores["review"] == (scores[result["certainty_score"]] < result["review_threshold"])
        assert result["review"] == any(s["review"] for s in result["segu"])
        assert results[study]["label_shape"] == list(np.asarray(Image.open(study)).shape[:2])
        assert set(results[study]["label_values"]) <= {0, 1}
        study_maps = maps[study]  # (explained findings, 1, 64, 64), min-max normalised
        assert study_maps.shape == (len(result["segu"]), 1, CHEST_TINY["image_size"], CHEST_TINY["image_size"])
        grid, patch = PATCHNET["patch_grid"], CHEST_TINY["image_size"] // PATCHNET["patch_grid"]
        patches = study_maps.unflatten(2, (grid, patch)).unflatten(4, (grid, patch))  # (P, 1, row, y, column, x)
        assert torch.equal(patches.amax(dim=(3, 5)), patches.amin(dim=(3, 5)))  # one value per patch
        assert all(m.amax() > m.amin() for m in study_maps)  # and the patches differ
        explained += len(result["segu"])
    assert explained > 0


def test_info_lists_both_bundles_tasks(server):
    status, info = server.json("/info/")
    assert status == 200
    for bundle, region in (("ham_segx", "lesion"), ("chestx_segx", "lungs")):
        assert info["models"][f"{bundle}_segmenter"]["labels"] == {region: 1}
        assert info["models"][f"{bundle}_segx"]["labels"] == {"segx": 1}
        assert info["models"][f"{bundle}_segx"]["type"] == "segmentation" and info["models"][f"{bundle}_segx"]["dimension"] == 2
        assert f"{bundle}_segmenter" in info["trainers"]
    assert info["datastore"]["total"] >= 8  # JPEG, PNG and DICOM studies are all listed


@pytest.mark.parametrize("bundle, suffix", STUDY_KINDS)
def test_segmenter_label_is_the_region_at_the_study_size(server, served, bundle_results, bundle, suffix):
    study = study_of(served, bundle, suffix)
    status, result, label = infer(server, f"{bundle}_segmenter", Path(study).stem)
    assert status == 200, result
    truth = ground_truth(served, study)
    assert label.shape == truth.shape and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    region = label > 0
    own_mask = bundle_results[study][1]
    assert dice(region, own_mask) > 0.95  # what the bundle itself finds, in the same orientation
    # where the ground truth is (the one-epoch segmenters over-segment): most of it covered, and enriched in the label
    assert (region & truth).sum() >= 0.7 * truth.sum() and truth[region].mean() >= 1.5 * truth.mean()
    if truth.shape[0] == truth.shape[1]:  # a transposed label of a square image would fit its ground truth worse
        assert dice(region, truth) > dice(region.T, truth)


@pytest.mark.parametrize("bundle, suffix", STUDY_KINDS)
def test_segx_result_matches_the_bundle_and_flags_review_by_its_threshold(server, served, bundle_results, bundle, suffix):
    study = study_of(served, bundle, suffix)
    status, result, label = infer(server, f"{bundle}_segx", Path(study).stem)
    assert status == 200, result
    rows, own_mask = bundle_results[study]
    probs = result["probabilities"]
    assert all(0 <= p <= 1 for p in probs.values())
    if bundle == "ham_segx":  # one softmax over the 7 diagnoses, one explained prediction
        assert not result["multi_label"] and sum(probs.values()) == pytest.approx(1, abs=1e-4)
        assert result["prediction"] == max(probs, key=probs.get) == rows[0]["prediction"]
    else:  # multi-label sigmoids: each finding at or above its validation threshold is explained
        assert result["multi_label"]
        assert result["prediction"] == [f for f in probs if probs[f] >= result["thresholds"][f]]
        assert result["prediction"] == [r["finding"] for r in rows if r["finding"]]
    for name, p in probs.items():
        assert p == pytest.approx(float(rows[0][f"p_{name}"]), abs=1e-4)
    assert [s["class"] for s in result["segu"]] == ([result["prediction"]] if bundle == "ham_segx" else result["prediction"])
    for scores, row in zip(result["segu"], rows):
        assert scores["ciou"] == pytest.approx(float(row["ciou"]), abs=0.02)
        assert scores["cauitc"] == pytest.approx(float(row["cauitc"]), abs=0.02)
        assert scores["review"] == (scores[result["certainty_score"]] < result["review_threshold"])
        assert scores["combined"] == pytest.approx(float(row["combined"]), abs=0.02)  # the calibration's fit, as the bundle
    assert result["review"] == any(s["review"] for s in result["segu"])
    # the bundles' inference.yaml: the review threshold calibrated on the validation fold, beside the weights
    calibrated = json.loads((served["roots"][bundle] / "models" / "review_gradcam.json").read_text())
    score = result["certainty_score"]
    assert score == "crelevance_mass" and result["review_threshold"] == calibrated["scores"][score]["threshold"]
    truth = ground_truth(served, study)
    assert label.shape == truth.shape and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    if result["segu"]:
        shown = max(result["segu"], key=lambda s: s["probability"])
        assert result["label_class"] == shown["class"]
        segx = label > 0
        if not shown["empty_region"] and segx.any():  # SegX keeps the map inside the predicted region
            assert (segx & own_mask).sum() >= 0.9 * segx.sum()
    else:
        assert result["label_class"] is None and not label.any() and not result["review"]


@pytest.mark.parametrize("model, study, status, words", [
    ("chestx_segx_segx", "bad_note", 422, ["bad_note.png", "not readable as an image"]),
    ("ham_segx_segmenter", "bad_note", 422, ["bad_note.png", "not readable as an image"]),
    ("chestx_segx_segx", "bad_nopixels", 422, ["bad_nopixels.dcm", "no Pixel Data"]),
    ("chestx_segx_segmenter", "bad_nopixels", 422, ["bad_nopixels.dcm", "no Pixel Data"]),
    ("no_such_model", "bad_note", 404, ["unknown model 'no_such_model'", "chestx_segx_segx"]),
    ("ham_segx_segx", "no_such_study", 404, ["unknown study 'no_such_study'"]),
])
def test_bad_input_is_a_clear_http_error_and_the_server_keeps_serving(server, served, model, study, status, words):
    got, detail, label = infer(server, model, study)
    assert got == status and label is None
    assert all(word in detail for word in words), detail
    assert infer(server, "chestx_segx_segmenter", Path(study_of(served, "chestx_segx", ".png")).stem)[0] == 200


def test_studies_outside_the_datastore_are_refused(server, served):
    """A study given as a server path, or a datastore file that links outside it, is refused (403) by name: MONAI
    Label alone processes any image the server can read."""
    outside = served["outside"]
    for study, why in [(str(outside), "is an absolute path"), (f"../{outside.parent.name}/{outside.stem}", "'..' component"),
                       ("bad_link", f"({outside}) lies outside the datastore")]:
        for model in ("ham_segx_segmenter", "chestx_segx_segx"):
            got, detail, label = infer(server, model, study)
            assert got == 403 and label is None and repr(study) in detail and why in detail, (study, got, detail)


def train(server, params: dict) -> dict:
    """The status of the training ``params`` of ``ham_segx_segmenter``, once it has ended."""
    status, task = server.json("/train/ham_segx_segmenter", "POST", params)
    assert status == 200 and task["status"] in ("SUBMITTED", "RUNNING"), task
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while (task := server.json("/train/")[1])["status"] in ("SUBMITTED", "RUNNING"):
        assert time.monotonic() < deadline, f"training still running after {TRAIN_TIMEOUT} s:\n{server.tail()}"
        time.sleep(3)
    return task


def test_a_failed_training_ends_in_error(server):
    """MONAI Label's multi-GPU training ignores its workers' exit status (and does nothing without a multi-GPU config
    under the bundle root), so it reported DONE; the task trains in one process and a refused request is an ERROR."""
    task = train(server, {"max_epochs": 1, "force_multi_gpu": True})
    assert task["status"] == "ERROR" and "force_multi_gpu: this task trains in one process only" in task["details"][-1], task


def test_train_writes_a_new_segmenter_checkpoint_from_the_datastore_labels(server, served):
    checkpoint = served["roots"]["ham_segx"] / "models" / "segmenter.pt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    task = train(server, {"max_epochs": 1, "val_split": 0.34})
    assert task["status"] == "DONE", "\n".join(task.get("details", [])) or server.tail()
    assert "Total Records for Training: 2" in server.log.read_text()  # the 3 labelled dermoscopy studies, 1 for validation
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() != before
    study = Path(study_of(served, "ham_segx", ".jpg")).stem
    assert infer(server, "ham_segx_segmenter", study)[0] == 200  # the new checkpoint is served
