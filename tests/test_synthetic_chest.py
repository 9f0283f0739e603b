"""The synthetic chest X-ray set: real ChestX-Det10 layout, determinism, anatomy, planted shortcut, DICOM copies."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import JPEGBaseline8Bit

from segx_monai.data.chestx_det import (
    CHESTX_DET10_FINDINGS,
    CHESTX_DET_FINDINGS,
    finding_masks,
    prepare_chestx_datalist,
)
from segx_monai.data.synthetic_chest import (
    CONFOUNDERS,
    DICOM_VARIANTS,
    FINDING_CONFOUNDER,
    FINDING_PROBABILITY,
    FINDINGS_DRAWN,
    dicom_copy,
    generate_chestx_like,
    main,
    plan_chestx_like,
    render_chestx_like,
)
from segx_monai.io import read_dicom

N_TRAIN, N_TEST, SIZE = 12, 4, 64
LOSSLESS_ATOL = 0.5 / 4095 + 1e-6  # 12 bits cannot hold every k/255: within half a stored step
ANNOTATION_FILES = ("train.json", "test.json", "ChestX_Det_train.json", "ChestX_Det_test.json")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chest") / "synth"
    return generate_chestx_like(out, n_train=N_TRAIN, n_test=N_TEST, image_size=SIZE)


@pytest.fixture(scope="module")
def annotations(root) -> dict[str, list[dict]]:
    return {name: json.loads((root / name).read_text()) for name in ANNOTATION_FILES}


def _digests(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components: each pixel takes its neighbours' largest label until nothing changes."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), 0)
    while True:
        padded = np.pad(labels, 1)
        shifted = [padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        neighbours = np.max(shifted, axis=0)
        grown = np.where(mask, neighbours, 0)
        if np.array_equal(grown, labels):
            return len(np.unique(labels[mask]))
        labels = grown


def test_layout_is_the_real_one(root, annotations):
    assert sorted(p.name for p in root.iterdir()) == sorted(["train_data", "test_data", "masks", "dicom", *ANNOTATION_FILES])
    names = {fold: [e["file_name"] for e in annotations[f"{fold}.json"]] for fold in ("train", "test")}
    assert (len(names["train"]), len(names["test"])) == (N_TRAIN, N_TEST)
    assert not set(names["train"]) & set(names["test"])
    for fold, fold_names in names.items():
        assert fold_names == sorted(fold_names, key=lambda n: int(n[:-4]))
        assert all(n[:-4].isdigit() and n.endswith(".png") for n in fold_names)
        assert sorted(p.name for p in (root / f"{fold}_data").iterdir()) == sorted(fold_names)
        for name in fold_names:
            with Image.open(root / f"{fold}_data" / name) as image:
                assert (image.format, image.mode, image.size) == ("PNG", "L", (SIZE, SIZE))
    assert sorted(p.name for p in (root / "masks").iterdir()) == sorted(names["train"] + names["test"])
    for fold in ("train", "test"):
        det10, det = annotations[f"{fold}.json"], annotations[f"ChestX_Det_{fold}.json"]
        assert all(list(e) == ["file_name", "syms", "boxes", "artefact"] for e in det10)  # the real fields, then the confounders
        assert all(list(e) == ["file_name", "syms", "boxes", "polygons", "artefact"] for e in det)
        assert [{k: e[k] for k in det10[0]} for e in det] == det10
        for e in det:
            assert set(e["syms"]) <= set(FINDINGS_DRAWN) and len(e["boxes"]) == len(e["polygons"]) == len(e["syms"])
            for box, polygon in zip(e["boxes"], e["polygons"]):  # a box spans its polygon, in pixels of the image
                assert box == [*np.min(polygon, axis=0).tolist(), *np.max(polygon, axis=0).tolist()]
                assert 0 <= min(box) and max(box) < SIZE


def test_same_arguments_give_identical_files(root, tmp_path):
    again = generate_chestx_like(tmp_path / "again", n_train=N_TRAIN, n_test=N_TEST, image_size=SIZE)
    assert _digests(again) == _digests(root)
    other = generate_chestx_like(tmp_path / "other", N_TRAIN, N_TEST, SIZE, seed=1, dicom=False)
    assert not set(_digests(other).items()) & set(_digests(root).items())
    assert not (other / "dicom").exists()


def test_lung_masks_are_two_lungs(root):
    for path in (root / "masks").iterdir():
        mask = _load(path)
        assert set(np.unique(mask)) == {0, 255}
        lungs = mask > 0
        assert 0.15 < lungs.mean() < 0.5 and _components(lungs) == 2, path.name
        middle = slice(SIZE // 2 - 2, SIZE // 2 + 2)  # the mediastinum
        assert lungs[:, : SIZE // 2].any() and lungs[:, SIZE // 2 :].any() and not lungs[:, middle].any()


def test_findings_lie_inside_the_lungs_and_change_the_picture(root, annotations):
    n_instances = 0
    for fold in ("train", "test"):
        for entry in annotations[f"ChestX_Det_{fold}.json"]:
            lungs = _load(root / "masks" / entry["file_name"]) > 0
            picture = _load(root / f"{fold}_data" / entry["file_name"]).astype(float)
            for sym, box, polygon in zip(entry["syms"], entry["boxes"], entry["polygons"]):
                instance = {"syms": [sym], "boxes": [box], "polygons": [polygon]}
                region = finding_masks(instance, lungs.shape, FINDINGS_DRAWN).any(0)
                assert (region & lungs).sum() >= 0.95 * region.sum(), (entry["file_name"], sym)
                assert lungs[(box[1] + box[3]) // 2, (box[0] + box[2]) // 2], (entry["file_name"], sym)
                rest = lungs & ~finding_masks(entry, lungs.shape, FINDINGS_DRAWN).any(0)
                if sym != "Pneumothorax":  # opacities are brighter than the lung around them
                    assert picture[region].mean() > picture[rest].mean() + 20, (entry["file_name"], sym)
                n_instances += 1
    assert n_instances > 5


def _labels_and_confounders(images) -> tuple[np.ndarray, np.ndarray]:
    """Per image and finding: whether the finding is drawn, and whether its confounder is."""
    labels = np.array([[f in image.findings for f in FINDINGS_DRAWN] for image in images])
    present = np.array([[FINDING_CONFOUNDER[f] in image.confounders for f in FINDINGS_DRAWN] for image in images])
    return labels, present


def _correlations(labels: np.ndarray, present: np.ndarray) -> np.ndarray:
    return np.array([np.corrcoef(labels[:, k], present[:, k])[0, 1] for k in range(labels.shape[1])])


def test_confounders_follow_the_labels_in_train_only():
    plan = plan_chestx_like(n_train=4000, n_test=4000, spurious_strength=0.9)
    for fold in ("train", "test"):
        labels, present = _labels_and_confounders([p for p in plan if p.fold == fold])
        np.testing.assert_allclose(labels.mean(axis=0), FINDING_PROBABILITY, atol=0.025)
        if fold == "train":
            agreement = (labels == present).mean(axis=0)
            assert np.all((agreement > 0.88) & (agreement < 0.92)) and _correlations(labels, present).min() > 0.6
        else:  # independent of the labels, as frequent as in train
            assert np.abs(_correlations(labels, present)).max() < 0.05
            frequency = FINDING_PROBABILITY * 0.9 + (1 - FINDING_PROBABILITY) * 0.1
            np.testing.assert_allclose(present.mean(axis=0), frequency, atol=0.025)
    assert 0.28 < np.mean([not p.findings for p in plan]) < 0.38
    unbiased = plan_chestx_like(n_train=4000, n_test=10, spurious_strength=0.5)
    labels, present = _labels_and_confounders([p for p in unbiased if p.fold == "train"])
    assert np.abs(_correlations(labels, present)).max() < 0.05


def test_confounders_never_touch_the_lungs():
    image = next(p for p in plan_chestx_like(N_TRAIN, N_TEST) if p.findings)
    bare, lungs, entry = render_chestx_like(dataclasses.replace(image, confounders=()), SIZE)
    for confounder in CONFOUNDERS:
        with_confounder = dataclasses.replace(image, confounders=(confounder,))
        picture, same_lungs, same_entry = render_chestx_like(with_confounder, SIZE)
        assert np.array_equal(same_lungs, lungs) and same_entry == entry
        assert np.array_equal(picture[lungs], bare[lungs]), confounder
        assert (picture != bare).sum() > 10, confounder  # drawn, outside the lungs


def test_every_dicom_copy_reads_back_as_the_png(root, annotations):
    plan = plan_chestx_like(N_TRAIN, N_TEST)
    assert [p.file_name for p in plan] == [e["file_name"] for e in annotations["train.json"] + annotations["test.json"]]
    written = sorted(p.name for p in (root / "dicom").iterdir())
    expected = {dicom_copy(index, image)[0]: (image, index) for index, image in enumerate(plan)}
    assert written == sorted(expected)
    assert any("." not in name for name in written)  # extension-less DICOM files
    assert {index % len(DICOM_VARIANTS) for _, index in expected.values()} == set(range(len(DICOM_VARIANTS)))
    for name, (image, index) in expected.items():
        reference = _load(root / f"{image.fold}_data" / image.file_name) / 255
        array, meta = read_dicom(root / "dicom" / name)
        assert array.shape == (SIZE, SIZE)
        assert meta["PatientID"] == f"SYN{image.file_name[:-4]}"
        if meta["TransferSyntaxUID"] == JPEGBaseline8Bit:
            assert np.abs(array - reference).max() <= 12 / 255 and np.abs(array - reference).mean() < 2.5 / 255
        else:
            np.testing.assert_allclose(array, reference, rtol=0, atol=LOSSLESS_ATOL, err_msg=name)
        options = DICOM_VARIANTS[index % len(DICOM_VARIANTS)]
        assert meta["BitsStored"] == options.get("bits", 8)


def test_prepare_indexes_the_generated_set(root, annotations, tmp_path):
    content = json.loads(prepare_chestx_datalist(root, tmp_path / "det10.json", val_fraction=0.25).read_text())
    assert content["labels"] == list(CHESTX_DET10_FINDINGS)
    assert [i["image"] for i in content["test"]] == [f"test_data/{e['file_name']}" for e in annotations["test.json"]]
    items = content["training"] + content["validation"] + content["test"]
    assert len(content["validation"]) == 3 and all(i["lung_mask"] == f"masks/{i['image_id']}.png" for i in items)
    by_name = {e["file_name"]: e for e in annotations["train.json"] + annotations["test.json"]}
    for item in items:
        entry = by_name[f"{item['image_id']}.png"]
        assert item["findings"] == entry["syms"]
        assert item["label"] == [float(f in entry["syms"]) for f in CHESTX_DET10_FINDINGS]

    det = json.loads(prepare_chestx_datalist(
        root, tmp_path / "det.json", train_json=root / "ChestX_Det_train.json", test_json=root / "ChestX_Det_test.json",
        findings=CHESTX_DET_FINDINGS,
    ).read_text())  # fmt: skip
    assert det["labels"] == list(CHESTX_DET_FINDINGS) and det["meta"]["dataset"] == "ChestX-Det"
    assert all("polygons" in i for fold in ("training", "validation", "test") for i in det[fold])


def test_prepare_reads_the_dicom_copies_alone(root, tmp_path):
    dicom_only = tmp_path / "dicom_only"
    shutil.copytree(root, dicom_only, ignore=shutil.ignore_patterns("train_data", "test_data"))
    content = json.loads(prepare_chestx_datalist(dicom_only, tmp_path / "split.json").read_text())
    images = [i["image"] for fold in ("training", "validation", "test") for i in content[fold]]
    assert len(images) == N_TRAIN + N_TEST and all(image.startswith("dicom/") for image in images)
    assert any(not image.endswith(".dcm") for image in images)


@pytest.mark.parametrize(
    "arguments, named",
    [
        (dict(n_train=0), "n_train"),
        (dict(n_test=0), "n_test"),
        (dict(image_size=16), "image_size"),
        (dict(image_size=64.0), "image_size"),
        (dict(spurious_strength=1.5), "spurious_strength"),
        (dict(spurious_strength=-0.1), "spurious_strength"),
    ],
)
def test_bad_arguments_are_named(tmp_path, arguments, named):
    with pytest.raises(ValueError, match=named):
        generate_chestx_like(tmp_path, **arguments)
    assert not any(tmp_path.iterdir())


def test_command_line_prints_one_line(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--n-train", "3", "--n-test", "2", "--size", "48", "--no-dicom"])
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "3 train and 2 test images" in printed
    assert len(list((tmp_path / "cli" / "masks").iterdir())) == 5 and not (tmp_path / "cli" / "dicom").exists()
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--size", "8"])
    assert not (tmp_path / "bad").exists()
