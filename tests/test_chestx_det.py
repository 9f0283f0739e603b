"""ChestX-Det10 / ChestX-Det indexing: hand-written annotations, their labels and masks, errors, the saved split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized
from PIL import Image

from segx_monai.data.chestx_det import (
    CHESTX_DET10_FINDINGS,
    CHESTX_DET_FINDINGS,
    FindingMasksd,
    box_mask,
    finding_masks,
    multi_hot,
    polygon_mask,
    prepare_chestx_datalist,
    read_chestx_det_json,
)
from segx_monai.data.datalist import DatasetError, load_fold, segmentation_items
from segx_monai.data.fingerprint import StaleSplitError
from segx_monai.data.readers import mask_reader
from segx_monai.io import write_dicom_variant

ATELECTASIS, CALCIFICATION, EFFUSION, NODULE, PNEUMOTHORAX = 0, 1, 3, 8, 9  # positions in CHESTX_DET10_FINDINGS
DET10 = [
    {"file_name": "36199.png", "syms": ["Atelectasis", "Nodule", "Nodule"],
     "boxes": [[1, 2, 5, 4], [10, 10, 12, 12], [3, 9, 4, 11]]},
    {"file_name": "36302.png", "syms": [], "boxes": []},
    {"file_name": "36331.png", "syms": ["Pneumothorax"], "boxes": [[0, 0, 15, 3]]},
]
# A 2x3 box (rows 3-4, columns 2-4) in an 8x8 image
BOX_2X3 = [2, 3, 4, 4]
EXPECTED_BOX = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)
# Right triangle with corners (x, y) = (1, 1), (6, 1), (1, 6): its outline (x + y = 7) included
TRIANGLE = [[1, 1], [6, 1], [1, 6]]
EXPECTED_TRIANGLE = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=np.uint8,
)


def _write_json(path: Path, entries) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def _write_png(path: Path, rows: int = 16, cols: int = 16, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((rows, cols), value, np.uint8)).save(path)
    return path


def _dataset(root: Path, n_train: int = 10, n_test: int = 3, masks: bool = True) -> Path:
    """A tiny ChestX-Det10 folder: train_data/ and test_data/ PNGs of 16x16, train/test.json, lung masks."""
    syms_cycle = [[], ["Effusion"], ["Nodule", "Mass"], [], ["Atelectasis"]]
    for fold, start, n in (("train", 1000, n_train), ("test", 5000, n_test)):
        entries = []
        for i in range(n):
            syms = syms_cycle[i % len(syms_cycle)]
            entries.append({"file_name": f"{start + i}.png", "syms": syms, "boxes": [[2, 2, 6, 7]] * len(syms)})
            _write_png(root / f"{fold}_data" / f"{start + i}.png")
            if masks:
                _write_png(root / "masks" / f"{start + i}.png", value=255)
        _write_json(root / f"{fold}.json", entries)
    return root


# --------------------------------------------------------------------------------------------- annotations


def test_det10_json_gives_multi_hot_labels(tmp_path):
    entries = read_chestx_det_json(_write_json(tmp_path / "train.json", DET10))
    assert [e["file_name"] for e in entries] == ["36199.png", "36302.png", "36331.png"]
    labels = np.stack([multi_hot(e["syms"]) for e in entries])
    assert labels.shape == (3, 10) and labels.dtype == np.float32
    expected = np.zeros((3, 10), np.float32)
    expected[0, [ATELECTASIS, NODULE]] = 1  # two nodules are one label
    expected[2, PNEUMOTHORAX] = 1
    np.testing.assert_array_equal(labels, expected)
    assert not labels[1].any()  # empty syms: no finding


def test_chestx_det_json_with_polygons_and_13_findings(tmp_path):
    entry = {"file_name": "1.png", "syms": ["Cardiomegaly", "Pleural Thickening"], "boxes": [[1, 1, 6, 6], [0, 0, 1, 1]],
             "polygons": [TRIANGLE, [[0, 0], [1, 0], [1, 1], [0, 1]]]}  # fmt: skip
    (read,) = read_chestx_det_json(_write_json(tmp_path / "ChestX_Det_train.json", [entry]), CHESTX_DET_FINDINGS)
    assert read["polygons"] == entry["polygons"]
    assert multi_hot(read["syms"], CHESTX_DET_FINDINGS).nonzero()[0].tolist() == [2, 11]
    with pytest.raises(DatasetError, match=r"unknown finding\(s\) \['Cardiomegaly', 'Pleural Thickening'\]"):
        read_chestx_det_json(tmp_path / "ChestX_Det_train.json")  # ChestX-Det10's ten names by default


def test_box_mask_is_the_box_both_ends_included():
    np.testing.assert_array_equal(box_mask(BOX_2X3, (8, 8)), EXPECTED_BOX)
    assert box_mask([2.5, 3.0, 4.2, 4.9], (8, 8)).sum() == 4  # fractional corners: columns 3-4, rows 3-4


def test_polygon_mask_is_the_hand_drawn_triangle():
    np.testing.assert_array_equal(polygon_mask(TRIANGLE, (8, 8)), EXPECTED_TRIANGLE)
    rectangle = [[2, 3], [4, 3], [4, 4], [2, 4]]
    np.testing.assert_array_equal(polygon_mask(rectangle, (8, 8)), EXPECTED_BOX)


def test_finding_masks_union_of_instances_polygons_first():
    entry = {"syms": ["Nodule", "Nodule", "Effusion"], "boxes": [BOX_2X3, [5, 5, 6, 6], [0, 0, 7, 7]],
             "polygons": [[], [[5, 5], [6, 5], [6, 6], [5, 6]], TRIANGLE]}  # fmt: skip
    masks = finding_masks(entry, (8, 8))
    assert masks.shape == (10, 8, 8) and masks.dtype == np.uint8
    expected_nodules = EXPECTED_BOX.copy()  # the first nodule has no polygon: its box
    expected_nodules[5:7, 5:7] = 1
    np.testing.assert_array_equal(masks[NODULE], expected_nodules)
    np.testing.assert_array_equal(masks[EFFUSION], EXPECTED_TRIANGLE)  # the polygon, not the whole-image box
    assert masks.sum() == masks[NODULE].sum() + masks[EFFUSION].sum()
    assert not finding_masks({"syms": [], "boxes": []}, (8, 8)).any()


def test_finding_masksd_uses_numpy_order_and_the_image_size(tmp_path):
    """A 6-row, 10-column image: x is the column, y the row."""
    image = _write_png(tmp_path / "1.png", rows=6, cols=10, value=255)
    item = {"image": str(image), "image_id": "1", "findings": ["Calcification"], "boxes": [[7, 1, 9, 2]]}
    load = Compose([LoadImaged("image", reader=mask_reader(), image_only=True), EnsureChannelFirstd("image")])
    out = FindingMasksd("image")(load(item))
    masks = out["finding_masks"]
    assert masks.shape == (10, 6, 10)
    expected = np.zeros((6, 10), np.uint8)
    expected[1:3, 7:10] = 1
    np.testing.assert_array_equal(masks[CALCIFICATION], expected)
    resized = Resized("image", (12, 20))(load(item))
    with pytest.raises(ValueError, match=r"went through \[.Resize.\]; apply FindingMasksd before spatial"):
        FindingMasksd("image")(resized)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"file_name": "1.png"}, "top level is a JSON dict; expected a list"),
        ([{"file_name": "1.png", "syms": ["Atelectasis", "Cardiomegaly"], "boxes": [[0, 0, 1, 1]] * 2}],
         r"entry 0 \(file_name '1.png'\): unknown finding\(s\) \['Cardiomegaly'\]; expected names from \['Atelectasis', "),
        ([{"file_name": "1.png", "syms": ["Nodule", "Mass"], "boxes": [[0, 0, 1, 1]]}],
         r"entry 0 \(file_name .1.png.\): 2 syms, boxes .*one \[x1, y1, x2, y2\] per sym"),
        ([{"file_name": "1.png", "syms": [], "boxes": []}, {"syms": ["Nodule"], "boxes": [[0, 0, 1, 1]]}],
         r"entry 1 \(file_name None\): no 'file_name'"),
        ([{"file_name": "1.png", "syms": [], "boxes": []}, {"file_name": "1.png", "syms": [], "boxes": []}],
         r"entry 1 \(file_name '1.png'\): file_name listed twice \(first at entry 0\)"),
        ([{"file_name": "1.png", "boxes": []}], r"entry 0 .*'syms' is None; expected a list of finding names"),
        ([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[0, "1", 2, 3]]}],
         r"box \[0, '1', 2, 3\]; expected four numbers"),
        ([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[5, 0, 2, 3]]}], "x2 < x1 or y2 < y1"),
        ([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[0, 0, 2, 3]], "polygons": []}],
         "expected one polygon per sym"),
        ([{"file_name": "1.png", "syms": ["Mass"], "boxes": [[0, 0, 2, 3]], "polygons": [[[0, 0], [1]]]}],
         r"expected a list of \[x, y\] number pairs"),
    ],
    ids=["not-a-list", "unknown-finding", "boxes-syms-mismatch", "missing-file-name", "duplicate", "missing-syms",
         "non-numeric", "inverted-box", "polygons-mismatch", "bad-point"],
)  # fmt: skip
def test_bad_annotations_are_named(tmp_path, entries, message):
    path = _write_json(tmp_path / "train.json", entries)
    with pytest.raises(DatasetError, match=message) as raised:
        read_chestx_det_json(path)
    assert str(path) in str(raised.value)


def test_invalid_json_is_named(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"file_name": "1.png", ')
    with pytest.raises(DatasetError, match=f"{path}: not valid JSON"):
        read_chestx_det_json(path)


# ------------------------------------------------------------------------------------------------- datalist


def _fold_ids(datalist: Path, fold: str) -> set[str]:
    return {item["image_id"] for item in json.loads(datalist.read_text())[fold]}


def test_official_split_kept_and_validation_carved_from_train(tmp_path):
    root = _dataset(tmp_path / "data")
    datalist = prepare_chestx_datalist(root, tmp_path / "split.json", seed=0, val_fraction=0.2)
    content = json.loads(datalist.read_text())
    assert content["labels"] == list(CHESTX_DET10_FINDINGS)
    assert [i["image_id"] for i in content["test"]] == ["5000", "5001", "5002"]
    released_train = {str(1000 + i) for i in range(10)}
    train_ids, val_ids = _fold_ids(datalist, "training"), _fold_ids(datalist, "validation")
    assert len(val_ids) == 2 and not train_ids & val_ids and train_ids | val_ids == released_train
    item = next(i for i in content["training"] + content["validation"] if i["image_id"] == "1002")
    assert item == {
        "image": "train_data/1002.png",
        "image_id": "1002",
        "label": [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],  # Mass and Nodule
        "findings": ["Nodule", "Mass"],
        "boxes": [[2, 2, 6, 7], [2, 2, 6, 7]],
        "lung_mask": "masks/1002.png",
    }

    assert _fold_ids(prepare_chestx_datalist(root, tmp_path / "again.json", 0, 0.2), "validation") == val_ids
    validations = [_fold_ids(prepare_chestx_datalist(root, tmp_path / f"{s}.json", s, 0.2), "validation") for s in (1, 2, 3)]
    assert any(v != val_ids for v in validations) and all(v <= released_train for v in validations)

    test_items = load_fold(datalist, "test", root, require="lung_mask")
    assert all(Path(i["image"]).is_file() and Path(i["lung_mask"]).is_file() for i in test_items)
    assert len(segmentation_items(test_items, "lung_mask")) == 3


def test_existing_datalist_is_never_redrawn(tmp_path):
    root = _dataset(tmp_path / "data")
    datalist = prepare_chestx_datalist(root, tmp_path / "split.json", seed=0)
    before = datalist.read_text()
    assert prepare_chestx_datalist(root, datalist, seed=0).read_text() == before
    with pytest.raises(StaleSplitError, match="split_seed 0 -> 5, val_fraction 0.1 -> 0.5"):
        prepare_chestx_datalist(root, datalist, seed=5, val_fraction=0.5)
    assert datalist.read_text() == before


def test_images_anywhere_and_dicom_in_place_of_png(tmp_path):
    root = tmp_path / "data"
    _write_json(root / "annotations" / "train.json", DET10[:2])
    _write_json(root / "annotations" / "test.json", DET10[2:])
    picture = np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))
    write_dicom_variant(picture, _mkdir(root / "dicom" / "a") / "36199.dcm", bits=12, photometric="MONOCHROME1")
    write_dicom_variant(picture, _mkdir(root / "dicom" / "b") / "36302", transfer_syntax="jpeg_lossless")  # no suffix
    _write_png(root / "some" / "folder" / "36331.png")
    _write_png(root / "masks" / "36199.png", value=255)
    content = json.loads(prepare_chestx_datalist(root, tmp_path / "split.json", val_fraction=0.5).read_text())
    images = {i["image_id"]: i["image"] for fold in ("training", "validation", "test") for i in content[fold]}
    assert images == {"36199": "dicom/a/36199.dcm", "36302": "dicom/b/36302", "36331": "some/folder/36331.png"}
    masks = {i["image_id"]: i.get("lung_mask") for fold in ("training", "validation", "test") for i in content[fold]}
    assert masks == {"36199": "masks/36199.png", "36302": None, "36331": None}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_png_preferred_over_dicom_and_mask_folder_not_taken_for_images(tmp_path):
    root = _dataset(tmp_path / "data", n_train=3, n_test=1)
    write_dicom_variant(np.zeros((16, 16), np.uint8), _mkdir(root / "dicom") / "1000.dcm")
    content = json.loads(prepare_chestx_datalist(root, tmp_path / "split.json", val_fraction=0).read_text())
    assert {i["image_id"]: i["image"] for i in content["training"]}["1000"] == "train_data/1000.png"


def test_missing_image_raises_or_is_skipped(tmp_path):
    root = _dataset(tmp_path / "data")
    (root / "train_data" / "1003.png").unlink()
    with pytest.raises(DatasetError, match=r"train.json, entry 3 \(file_name '1003.png'\): image 1003.png .*not found"):
        prepare_chestx_datalist(root, tmp_path / "split.json")
    assert not (tmp_path / "split.json").exists()
    content = json.loads(prepare_chestx_datalist(root, tmp_path / "split.json", skip_bad=True).read_text())
    assert [s["file_name"] for s in content["meta"]["skipped"]] == ["1003.png"]
    assert "1003" not in {i["image_id"] for fold in ("training", "validation") for i in content[fold]}


def test_lung_mask_of_another_size_is_named(tmp_path):
    root = _dataset(tmp_path / "data")
    _write_png(root / "masks" / "5001.png", rows=8, cols=8, value=255)
    with pytest.raises(DatasetError, match=r"masks/5001.png: lung mask is 8x8 but its image 5001.png is 16x16"):
        prepare_chestx_datalist(root, tmp_path / "split.json")


def test_annotation_beyond_the_image_is_named(tmp_path):
    """Boxes in pixels of the 1024x1024 originals do not fit a downsized copy of the image."""
    root = _dataset(tmp_path / "data")
    entries = json.loads((root / "test.json").read_text())
    entries[1]["syms"], entries[1]["boxes"] = ["Mass"], [[400, 300, 700, 520]]
    _write_json(root / "test.json", entries)
    with pytest.raises(DatasetError, match=r"entry 1 .* reaches \(x, y\) = \(700, 520\) but 5001.png is 16x16"):
        prepare_chestx_datalist(root, tmp_path / "split.json")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root.mkdir(), r"no train.json found in it or its sub-folders"),
        (lambda root: None, "does not exist or is not a folder"),
        (lambda root: _write_json(root / "test.json", DET10) and _write_json(root / "train.json", DET10[:1]),
         r"both list \['36199.png'\]; expected disjoint train and test images"),
        (lambda root: _write_json(root / "train.json", []) and _write_json(root / "test.json", DET10),
         "train.json: no entries left"),
    ],
    ids=["empty-folder", "no-folder", "train-test-overlap", "empty-train"],
)
def test_bad_folders_are_named(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DatasetError, match=message):
        prepare_chestx_datalist(root, tmp_path / "split.json")
