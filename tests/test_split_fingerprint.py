"""A saved split is used only while its data and settings are unchanged, and models are used only on their own split."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import HAM_CONFIGS, TINY, ham_workflow, run_workflow
from segx_monai.data.chestx_det import prepare_chestx_datalist
from segx_monai.data.datalist import load_fold
from segx_monai.data.fingerprint import CheckSplit, SplitRecord, StaleSplitError
from segx_monai.data.ham10000 import MASK_SUFFIX, prepare_ham_datalist
from segx_monai.data.synthetic_chest import generate_chestx_like
from segx_monai.data.synthetic_derm import generate_ham_like

FOLDS = ("training", "validation", "test")
RESULTS = ("metrics.csv", "predictions.csv", "samples.csv", "report.html")  # what a completed workflow writes


@pytest.fixture
def ham_copy(ham_dir, tmp_path) -> Path:
    """A copy of the tiny HAM10000 folder that a test may edit."""
    return Path(shutil.copytree(ham_dir, tmp_path / "HAM10000"))


def folds_of(datalist: Path) -> dict[str, list[str]]:
    content = json.loads(datalist.read_text())
    return {fold: [i["image_id"] for i in content[fold]] for fold in FOLDS}


def metadata_rows(dataset: Path) -> tuple[Path, list[dict]]:
    path = dataset / "HAM10000_metadata.csv"
    with open(path, newline="") as f:
        return path, list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_another_split_seed_is_refused_and_the_saved_split_kept(ham_copy, tmp_path):
    datalist = prepare_ham_datalist(ham_copy, tmp_path / "split.json", seed=0)
    saved = datalist.read_bytes()
    assert prepare_ham_datalist(ham_copy, datalist, seed=0) == datalist
    with pytest.raises(StaleSplitError, match=r"settings: split_seed 0 -> 1\. .*delete or move .*split\.json"):
        prepare_ham_datalist(ham_copy, datalist, seed=1)
    with pytest.raises(StaleSplitError, match=r"test_fraction 0\.2 -> 0\.3"):
        prepare_ham_datalist(ham_copy, datalist, seed=0, test_fraction=0.3)
    assert datalist.read_bytes() == saved


def test_metadata_edited_after_indexing_is_refused(ham_copy, tmp_path):
    """An image moved into another lesion (same diagnosis) after the split: that lesion could span training and test."""
    datalist = prepare_ham_datalist(ham_copy, tmp_path / "split.json", seed=0)
    path, rows = metadata_rows(ham_copy)
    folds = folds_of(datalist)
    fold_of = {image: fold for fold, images in folds.items() for image in images}
    moved = next(r for r in rows if fold_of[r["image_id"]] == "test")
    target = next(r for r in rows if fold_of[r["image_id"]] == "training" and r["dx"] == moved["dx"])
    moved["lesion_id"] = target["lesion_id"]
    write_rows(path, rows)
    message = rf"metadata: HAM10000_metadata.csv edited \(1 row\(s\) changed, e.g. {moved['image_id']} \(lesion_id, dx\) "
    with pytest.raises(StaleSplitError, match=message):
        prepare_ham_datalist(ham_copy, datalist, seed=0)


def test_image_added_after_indexing_is_refused(ham_copy, tmp_path):
    datalist = prepare_ham_datalist(ham_copy, tmp_path / "split.json", seed=0)
    path, rows = metadata_rows(ham_copy)
    source = next(ham_copy.rglob(f"{rows[0]['image_id']}.jpg"))
    shutil.copy(source, source.parent / "ISIC_9999999.jpg")
    with pytest.raises(StaleSplitError, match=r"image list: 1 added \(HAM10000_images_part_\d/ISIC_9999999\.jpg\)"):
        prepare_ham_datalist(ham_copy, datalist, seed=0)
    write_rows(path, rows + [{**rows[0], "image_id": "ISIC_9999999", "lesion_id": "HAM_9999999"}])
    with pytest.raises(StaleSplitError, match=r"HAM10000_metadata.csv edited \(1 row\(s\) added, e.g. ISIC_9999999\); image list: 1 added"):
        prepare_ham_datalist(ham_copy, datalist, seed=0)
    (source.parent / "ISIC_9999999.jpg").unlink()
    write_rows(path, rows)
    source.unlink()  # an image removed
    with pytest.raises(StaleSplitError, match=rf"image list: 1 removed \(.*{source.name}\)"):
        prepare_ham_datalist(ham_copy, datalist, seed=0)


def test_masks_added_later_attach_without_moving_any_image(ham_copy, tmp_path):
    masks = sorted(ham_copy.rglob(f"*{MASK_SUFFIX}"))
    held_back = tmp_path / "later"
    held_back.mkdir()
    for mask in masks:
        shutil.move(mask, held_back / mask.name)
    datalist = prepare_ham_datalist(ham_copy, tmp_path / "split.json", seed=0)
    with pytest.raises(ValueError, match="fold 'training' has no items with a 'mask'"):
        load_fold(datalist, "training", ham_copy, require="mask")
    before = folds_of(datalist)
    for mask in masks[: len(masks) // 2]:
        shutil.move(held_back / mask.name, mask)
    prepare_ham_datalist(ham_copy, datalist, seed=0)
    assert folds_of(datalist) == before
    with_masks = sum(len(load_fold(datalist, fold, ham_copy, require="mask")) for fold in FOLDS)
    assert with_masks == len(masks) // 2
    item = load_fold(datalist, "training", ham_copy, require="mask")[0]
    assert Path(item["mask"]).is_file() and Path(item["mask"]).name == f"{item['image_id']}{MASK_SUFFIX}"


def test_chest_split_checked_and_lung_masks_attached(tmp_path):
    dataset = generate_chestx_like(tmp_path / "ChestX-Det10", n_train=20, n_test=8, image_size=32, seed=1, dicom=False)
    masks = dataset / "masks"
    shutil.move(masks, tmp_path / "masks_later")
    datalist = prepare_chestx_datalist(dataset, tmp_path / "split.json", seed=0)
    before = folds_of(datalist)
    assert not any("lung_mask" in i for fold in FOLDS for i in json.loads(datalist.read_text())[fold])
    shutil.move(tmp_path / "masks_later", masks)
    prepare_chestx_datalist(dataset, datalist, seed=0)
    assert folds_of(datalist) == before
    assert len(load_fold(datalist, "test", dataset, require="lung_mask")) == len(before["test"])
    with pytest.raises(StaleSplitError, match=r"split_seed 0 -> 2"):
        prepare_chestx_datalist(dataset, datalist, seed=2)
    entries = json.loads((dataset / "test.json").read_text())
    (dataset / "test.json").write_text(json.dumps(entries[:-1]))
    with pytest.raises(StaleSplitError, match=r"metadata: test.json edited"):
        prepare_chestx_datalist(dataset, datalist, seed=0)


def run_error(workflow: ConfigWorkflow) -> BaseException:
    """The exception a workflow's run ends with, unwrapped from MONAI's ``Failed to evaluate`` errors."""
    workflow.initialize()
    with pytest.raises(Exception) as info:
        workflow.run()
    error = info.value
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def copy_models(trained: Path, root: Path) -> Path:
    shutil.copytree(trained / "models", root / "models")
    return root


@pytest.mark.parametrize("configs", [["inference.yaml", "train_classifier.yaml", "evaluate.yaml"], ["inference.yaml", "interpret.yaml"],
                                     ["inference.yaml"], ["inference.yaml", "train_segmenter.yaml", "evaluate.yaml"]])
def test_a_model_is_refused_on_another_split(trained_ham_bundle, ham_dir, tmp_path, configs):
    root = copy_models(trained_ham_bundle, tmp_path / "bundle")
    error = run_error(ham_workflow(root, ham_dir, configs, split_seed=1))
    assert isinstance(error, StaleSplitError)
    assert re.search(r"\.pt was trained on split \w{12} of .*HAM10000 .* but this run reads split \w{12} of", str(error))
    assert not [p for p in root.rglob("*") if p.name in RESULTS]


def test_inference_on_given_images_needs_no_split(trained_ham_bundle, ham_dir, tmp_path):
    root = copy_models(trained_ham_bundle, tmp_path / "bundle")
    images = sorted(ham_dir.rglob("ISIC_*.jpg"))[:3]
    run_workflow(ham_workflow(root, tmp_path / "no_such_data", ["inference.yaml"], workflow_type="infer",
                             input=[str(p) for p in images]))
    assert len((root / "inference" / "predictions.csv").read_text().splitlines()) == 4


def test_evaluating_without_dataset_dir_is_refused(trained_ham_bundle, ham_dir, tmp_path):
    """Left out, --dataset_dir is the built-in synthetic set: a model trained on real data is not evaluated on it."""
    root = copy_models(trained_ham_bundle, tmp_path / "bundle")
    generate_ham_like(root / "data" / "synthetic", n_images=40, image_size=(32, 24), seed=3)
    workflow = ConfigWorkflow(
        config_file=[str(HAM_CONFIGS / c) for c in ("inference.yaml", "train_classifier.yaml", "evaluate.yaml")],
        meta_file=str(HAM_CONFIGS / "metadata.json"), logging_file=str(HAM_CONFIGS / "logging.conf"),
        workflow_type="eval", bundle_root=str(root), **TINY,
    )
    error = run_error(workflow)
    assert isinstance(error, StaleSplitError)
    assert f"of {ham_dir} (datalist " in str(error) and "but this run reads split" in str(error)
    assert f"of {(root / 'data' / 'synthetic').resolve()} (datalist " in str(error)
    assert not [p for p in root.rglob("*") if p.name in RESULTS]


def test_resuming_on_another_split_is_refused_and_old_checkpoints_warn(ham_copy, tmp_path, caplog):
    first = prepare_ham_datalist(ham_copy, tmp_path / "first.json", seed=0)
    second = prepare_ham_datalist(ham_copy, tmp_path / "second.json", seed=1)
    saved = SplitRecord(first, ham_copy).state_dict()
    SplitRecord(first, ham_copy).load_state_dict(saved)
    with pytest.raises(StaleSplitError, match="the resume point was trained on split .* --resume False"):
        SplitRecord(second, ham_copy).load_state_dict(saved)
    bare = tmp_path / "old.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), bare)
    with caplog.at_level(logging.WARNING):
        CheckSplit(bare, SplitRecord(second, ham_copy))(None)
    assert "old.pt records no split" in caplog.text
