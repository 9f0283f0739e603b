"""HAM10000 indexing in its real layout, the saved lesion-grouped split, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segx_monai.data.datalist import DatasetError, datalist_path, load_fold
from segx_monai.data.fingerprint import StaleSplitError
from segx_monai.data.ham10000 import HAM_CLASSES, index_ham10000, prepare_ham_datalist
from segx_monai.data.splits import split_by_group


def write_ham(root: Path, rows: list[tuple[str, str, str]], size=(60, 45), parts=2, masks=True) -> Path:
    """A HAM10000-layout folder written by hand: metadata CSV, JPEGs over ``parts`` folders, masks."""
    for k in range(parts):
        (root / f"HAM10000_images_part_{k + 1}").mkdir(parents=True, exist_ok=True)
    (root / "seg").mkdir(exist_ok=True)
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
        for n, (lesion, image, dx) in enumerate(rows):
            w.writerow([lesion, image, dx, "histo", "50.0", "male", "back"])
            Image.fromarray(np.full((size[1], size[0], 3), 40 * (n % 6), np.uint8)).save(root / f"HAM10000_images_part_{n % parts + 1}" / f"{image}.jpg")
            if masks:
                Image.fromarray(np.zeros((size[1], size[0]), np.uint8)).save(root / "seg" / f"{image}_segmentation.png")
    return root


ROWS = [("HAM_1", "ISIC_1", "nv"), ("HAM_1", "ISIC_2", "nv"), ("HAM_2", "ISIC_3", "mel"), ("HAM_3", "ISIC_4", "df")]


def test_index_reads_both_image_parts_masks_and_labels(tmp_path):
    items, skipped = index_ham10000(write_ham(tmp_path, ROWS))
    assert skipped == []
    by_id = {i["image_id"]: i for i in items}
    assert by_id["ISIC_1"]["image"] == "HAM10000_images_part_1/ISIC_1.jpg"
    assert by_id["ISIC_2"]["image"] == "HAM10000_images_part_2/ISIC_2.jpg"
    assert by_id["ISIC_3"]["label"] == HAM_CLASSES.index("mel") == 1
    assert by_id["ISIC_4"]["mask"] == "seg/ISIC_4_segmentation.png"
    assert by_id["ISIC_2"]["lesion_id"] == "HAM_1"


def test_isic2018_one_hot_ground_truth_with_lesion_groupings_from_metadata(tmp_path):
    root = write_ham(tmp_path, ROWS)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    gt.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.0,1.0,0.0,0.0,0.0,0.0,0.0\nISIC_4,0.0,0.0,0.0,0.0,0.0,0.0,1.0\n")
    items, _ = index_ham10000(root, ground_truth_csv=gt)
    assert [(i["image_id"], i["dx"], i["label"], i["lesion_id"]) for i in items] == [("ISIC_1", "nv", 0, "HAM_1"), ("ISIC_4", "vasc", 5, "HAM_3")]


@pytest.mark.parametrize(
    "breaking, message",
    [
        (lambda root: (root / "HAM10000_images_part_2" / "ISIC_2.jpg").unlink(), r"HAM10000_metadata.csv:3.*ISIC_2\.jpg not found"),
        (lambda root: (root / "HAM10000_images_part_1" / "ISIC_3.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated"), r"ISIC_3\.jpg: not a readable image"),
        (lambda root: Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "seg" / "ISIC_1_segmentation.png"), r"ISIC_1_segmentation\.png: mask is 10x10 but its image ISIC_1\.jpg is 60x45"),
        (lambda root: (root / "HAM10000_metadata.csv").write_text((root / "HAM10000_metadata.csv").read_text().replace(",df,", ",melanoma,")), r"line 5 \(image_id 'ISIC_4'\): unknown dx 'melanoma'"),
        (lambda root: (root / "HAM10000_metadata.csv").write_text("lesion_id,image_id,diagnosis\nHAM_1,ISIC_1,nv\n"), r"missing column\(s\) \['dx'\]"),
    ],
    ids=["missing-image", "corrupt-jpeg", "mask-size", "unknown-dx", "missing-column"],
)
def test_bad_input_names_the_file_or_row(tmp_path, breaking, message):
    root = write_ham(tmp_path, ROWS)
    breaking(root)
    with pytest.raises(DatasetError, match=message):
        index_ham10000(root)


def test_empty_folder_and_skip_bad_counts_skipped_rows(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no HAM10000_metadata.csv"):
        index_ham10000(tmp_path / "empty")
    root = write_ham(tmp_path / "ham", ROWS)
    (root / "HAM10000_images_part_1" / "ISIC_3.jpg").unlink()
    items, skipped = index_ham10000(root, skip_bad=True)
    assert [i["image_id"] for i in items] == ["ISIC_1", "ISIC_2", "ISIC_4"]
    assert len(skipped) == 1 and skipped[0]["image_id"] == "ISIC_3" and "not found" in skipped[0]["reason"]


def test_split_keeps_lesions_together_and_is_stratified_and_seeded():
    lesions = [f"L{i // 3}" for i in range(300)]  # 100 lesions of 3 images
    dx = [("nv", "mel", "bcc", "df")[(i // 3) % 4] for i in range(300)]
    folds = split_by_group(lesions, dx, val_fraction=0.1, test_fraction=0.2, seed=3)
    fold_of_lesion = {}
    for lesion, fold in zip(lesions, folds):
        assert fold_of_lesion.setdefault(lesion, fold) == fold
    for cls in ("nv", "mel", "bcc", "df"):  # 25 lesions each: 5 test, 2 or 3 validation
        test = {l for l, d, f in zip(lesions, dx, folds) if d == cls and f == "test"}
        assert len(test) == 5
    assert folds == split_by_group(lesions, dx, 0.1, 0.2, seed=3)
    assert folds != split_by_group(lesions, dx, 0.1, 0.2, seed=4)
    with pytest.raises(ValueError, match="group 'L0' has items in two strata"):
        split_by_group(["L0", "L0"], ["nv", "mel"])


def test_datalist_is_written_once_and_never_redrawn(tmp_path, ham_dir):
    path = datalist_path(tmp_path, ham_dir)
    prepare_ham_datalist(ham_dir, path, seed=0)
    first = path.read_text()
    prepare_ham_datalist(ham_dir, path, seed=0)
    with pytest.raises(StaleSplitError, match="split_seed 0 -> 99"):  # an existing split is never redrawn
        prepare_ham_datalist(ham_dir, path, seed=99)
    assert path.read_text() == first
    content = json.loads(first)
    lesions = {fold: {i["lesion_id"] for i in content[fold]} for fold in ("training", "validation", "test")}
    assert not lesions["training"] & lesions["test"] and not lesions["validation"] & lesions["test"]
    items = load_fold(path, "test", ham_dir)
    assert all(Path(i["image"]).is_file() and Path(i["mask"]).is_file() for i in items)


def test_copied_image_is_an_error_not_a_random_pick(tmp_path):
    root = write_ham(tmp_path, ROWS)
    shutil.copy(root / "HAM10000_images_part_1" / "ISIC_1.jpg", root / "ISIC_1.jpg")
    with pytest.raises(DatasetError, match="'ISIC_1' found twice"):
        index_ham10000(root)
