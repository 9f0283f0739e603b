"""skip_bad_samples: every workflow skips, logs and lists (skipped.csv) the samples whose files cannot be loaded or
decoded and processes the rest; without it, the first such sample stops the run with an error naming the file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.data import DataLoader
from monai.transforms import LoadImaged
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from conftest import INFER, INTERPRET, TRAIN_CLASSIFIER, chest_workflow, ham_workflow, run_workflow
from segx_monai.data.readers import xray_readers
from segx_monai.data.skipping import SKIPPED_KEY, CheckedDataset, SampleLoadError
from segx_monai.io import DicomReadError, read_dicom, write_dicom_variant

# bad file kind -> a fragment of the cause recorded for it
DICOM_KINDS = {
    "no_pixel_data": "no Pixel Data",
    "unsupported_syntax": "no pixel data decoder for transfer syntax",
    "truncated_pixels": "could not decode the pixel data",
    "multi_frame": "2 frames",
    "corrupt_jpeg": "decoded with warnings",
}


def _picture(size: int) -> np.ndarray:
    """A noisy horizontal gradient: every JPEG block carries data."""
    noise = np.random.default_rng(0).normal(0, 20, (size, size))
    return np.clip(np.linspace(20, 200, size)[None, :] + noise, 0, 255).astype(np.uint8)


def _save(ds, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)


def corrupt_jpeg_dicom(path: Path, size: int = 64, offset: int = 20, n: int = 200) -> Path:
    """A JPEG baseline DICOM with ``n`` bytes of its entropy-coded data zeroed from ``offset`` after the start of scan."""
    write_dicom_variant(_picture(size), path, transfer_syntax="jpeg_baseline")
    data = bytearray(path.read_bytes())
    start = data.index(b"\xff\xda") + offset
    data[start : start + n] = bytes(n)
    path.write_bytes(bytes(data))
    return path


def bad_dicom(kind: str, path: Path, size: int = 64) -> Path:
    """A DICOM file of one of the :data:`DICOM_KINDS` whose header still reads (size ``size`` x ``size``)."""
    if kind == "corrupt_jpeg":
        return corrupt_jpeg_dicom(path, size)
    ds = write_dicom_variant(_picture(size), path, bits=16 if kind == "truncated_pixels" else 8)
    if kind == "no_pixel_data":
        del ds.PixelData
    elif kind == "unsupported_syntax":
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
    elif kind == "multi_frame":
        ds.set_pixel_data(np.stack([_picture(size)] * 2), "MONOCHROME2", 8, generate_instance_uid=False)
    if kind != "truncated_pixels":
        _save(ds, path)
    else:
        path.write_bytes(path.read_bytes()[:-1000])
    return path


def truncated(path: Path) -> Path:
    """Cut an image file to half its bytes (the header still reads)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def damaged():
    """Truncate files of a shared data set for one test and restore their bytes after it: ``damaged(path)``."""
    saved = {}

    def damage(path: Path) -> Path:
        saved[path] = path.read_bytes()
        return truncated(path)

    yield damage
    for path, content in saved.items():
        path.write_bytes(content)


def _datalist(bundle_root: Path) -> dict:
    return json.loads(next((bundle_root / "datalists").glob("*.json")).read_text())


def fails_naming(workflow, *paths: Path | str) -> str:
    """Run ``workflow``, expecting it to stop with a SampleLoadError naming one of ``paths``; return its message."""
    with pytest.raises(Exception) as info:
        run_workflow(workflow)
    err = info.value
    while err is not None and not isinstance(err, SampleLoadError):
        err = err.__cause__ or err.__context__
    assert err is not None, f"no SampleLoadError in {info.value!r}"
    assert any(str(err).startswith(f"{path}: could not load this sample") for path in paths), str(err)
    return str(err)


def test_corrupt_jpeg_stream_is_an_error(tmp_path):
    """2000 zeroed bytes in a JPEG baseline stream: one decoder fails, pydicom logs it and another returns a partly
    black picture; reading it is an error naming the file and what the decoder said."""
    path = corrupt_jpeg_dicom(tmp_path / "corrupt.dcm", size=128, n=2000)
    silent = pydicom.dcmread(path).pixel_array  # what a plain read returns, without any exception
    assert silent.shape == (128, 128) and (silent == 0).mean() > 0.3 > (_picture(128) == 0).mean()
    with pytest.raises(DicomReadError, match="decoded with warnings") as info:
        read_dicom(path)
    assert str(info.value).startswith(f"{path}: ") and "libjpeg" in str(info.value)
    write_dicom_variant(_picture(128), tmp_path / "intact.dcm", transfer_syntax="jpeg_baseline")
    assert read_dicom(tmp_path / "intact.dcm")[0].shape == (128, 128)  # an intact stream still reads


@pytest.fixture
def chest_kinds(tmp_path) -> list[dict]:
    """A good PNG, a good DICOM, then one DICOM of each bad kind, as datalist items."""
    Image.fromarray(_picture(64)).save(tmp_path / "good.png")
    write_dicom_variant(_picture(64), tmp_path / "good.dcm")
    paths = [tmp_path / "good.png", tmp_path / "good.dcm"] + [bad_dicom(kind, tmp_path / f"{kind}.dcm") for kind in DICOM_KINDS]
    return [{"image": str(p)} for p in paths]


@pytest.mark.parametrize("cache_rate, num_workers", [(0.0, 1), (1.0, 2)])
def test_checked_dataset_skips_and_lists_every_bad_kind(chest_kinds, cache_rate, num_workers):
    """Uncached (evaluation, inference) and cached in threads (training): the good samples stay, every bad one is
    listed with its cause, and DataLoader workers see the good ones only."""
    load = [LoadImaged(keys="image", reader=xray_readers(), image_only=True)]
    dataset = CheckedDataset(chest_kinds, load, skip_bad=True, cache_rate=cache_rate, num_workers=num_workers)
    assert [Path(i["image"]).name for i in dataset.data] == ["good.png", "good.dcm"] and len(dataset) == 2
    causes = {Path(r["file"]).stem: r["cause"] for r in dataset.skipped}
    assert set(causes) == set(DICOM_KINDS)
    for kind, fragment in DICOM_KINDS.items():
        assert fragment in causes[kind], (kind, causes[kind])
    batches = list(DataLoader(dataset, batch_size=1, num_workers=2))
    assert len(batches) == 2 and all(SKIPPED_KEY not in b and tuple(b["image"].shape[-2:]) == (64, 64) for b in batches)


def test_checked_dataset_without_skip_names_the_first_bad_file(chest_kinds):
    load = [LoadImaged(keys="image", reader=xray_readers(), image_only=True)]
    first_bad = chest_kinds[2]["image"]
    with pytest.raises(SampleLoadError, match="no Pixel Data") as info:
        CheckedDataset(chest_kinds, load, cache_rate=1.0)
    assert str(info.value).startswith(f"{first_bad}: could not load this sample")
    dataset = CheckedDataset(chest_kinds, load)  # uncached: the error comes when the sample is read
    assert len(dataset) == len(chest_kinds) and dataset[1]["image"].shape[-2:] == (64, 64)
    with pytest.raises(SampleLoadError, match=f"^{first_bad}: could not load this sample"):
        dataset[2]


@pytest.mark.slow
def test_chest_inference_skips_bad_dicoms(trained_chest_bundle, chest_dir, tmp_path):
    folder = tmp_path / "studies"
    folder.mkdir()
    good = sorted((chest_dir / "dicom").glob("*.dcm"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    bad = {kind: bad_dicom(kind, folder / f"{kind}.dcm") for kind in DICOM_KINDS}
    out = tmp_path / "inference"
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["inference.yaml"],
                                input=str(folder), inference_dir=str(out), skip_bad_samples=True))
    assert {row["image_id"] for row in read_csv(out / "predictions.csv")} == {p.stem for p in good}
    skipped = {Path(row["file"]).stem: row for row in read_csv(out / "skipped.csv")}
    assert set(skipped) == set(DICOM_KINDS)
    assert all(DICOM_KINDS[kind] in skipped[kind]["cause"] and skipped[kind]["fold"] == "input" for kind in DICOM_KINDS)
    first = min(bad.values())  # the folder is read in name order
    fails_naming(chest_workflow(trained_chest_bundle, chest_dir, ["inference.yaml"],
                                input=str(folder), inference_dir=str(tmp_path / "off")), first)


@pytest.mark.slow
def test_chest_training_skips_bad_dicoms(chest_dir, tmp_path):
    """Bad DICOMs in place of training images pass indexing (their headers read) and are skipped when loaded."""
    data = tmp_path / "ChestX-Det10"
    shutil.copytree(chest_dir, data)
    names = [entry["file_name"] for entry in json.loads((data / "train.json").read_text())][: len(DICOM_KINDS)]
    bad = {}
    for kind, name in zip(DICOM_KINDS, names):
        (data / "train_data" / name).unlink()  # the indexer then finds the DICOM copy, dicom/<id>.dcm
        bad[kind] = bad_dicom(kind, data / "dicom" / f"{Path(name).stem}.dcm")
    root = tmp_path / "bundle"
    workflow = run_workflow(chest_workflow(root, data, ["inference.yaml", "train_classifier.yaml"], skip_bad_samples=True))
    rows = read_csv(root / "runs" / "classifier" / "skipped.csv")
    assert sorted(row["file"] for row in rows) == sorted(str(p) for p in bad.values())
    assert {row["fold"] for row in rows} <= {"training", "validation"}
    for row in rows:
        kind = next(k for k, p in bad.items() if str(p) == row["file"])
        assert DICOM_KINDS[kind] in row["cause"]
    datalist = _datalist(root)
    parsed = workflow.parser.get_parsed_content
    assert len(parsed("train#dataset")) + len(parsed("validate#dataset")) == len(datalist["training"]) + len(datalist["validation"]) - len(bad)
    message = fails_naming(chest_workflow(root, data, ["inference.yaml", "train_classifier.yaml"], resume=False, output_dir=str(tmp_path / "off")),
                           *bad.values())
    assert "skip_bad_samples" in message


@pytest.mark.slow
def test_ham_segmenter_training_skips_a_truncated_mask(trained_ham_bundle, ham_dir, damaged, tmp_path):
    """A truncated lesion mask passes indexing (its header reads) and is skipped when loaded; the list names the
    mask, not its image."""
    mask = damaged(ham_dir / next(i["mask"] for i in _datalist(trained_ham_bundle)["training"] if "mask" in i))
    settings = dict(ckpt_dir=str(tmp_path / "models"), resume=False)  # the shared bundle's models stay as they are
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, ["inference.yaml", "train_segmenter.yaml"], output_dir=str(tmp_path / "on"),
                              skip_bad_samples=True, **settings))
    rows = read_csv(tmp_path / "on" / "skipped.csv")
    assert [(row["fold"], row["file"]) for row in rows] == [("training", str(mask))] and "truncated" in rows[0]["cause"]
    fails_naming(ham_workflow(trained_ham_bundle, ham_dir, ["inference.yaml", "train_segmenter.yaml"], output_dir=str(tmp_path / "off"), **settings), mask)


@pytest.mark.slow
def test_ham_evaluation_interpretation_and_inference_skip_unreadable_images(trained_ham_bundle, ham_dir, damaged, tmp_path):
    root = trained_ham_bundle
    test_images = [ham_dir / i["image"] for i in _datalist(root)["test"]]
    bad = damaged(test_images[0])

    eval_dir = tmp_path / "eval"
    workflow = run_workflow(ham_workflow(root, ham_dir, TRAIN_CLASSIFIER + ["evaluate.yaml"], eval_dir=str(eval_dir), skip_bad_samples=True))
    assert [row["file"] for row in read_csv(eval_dir / "skipped.csv")] == [str(bad)] and (eval_dir / "metrics.csv").is_file()
    assert len(workflow.parser.get_parsed_content("validate#dataset")) == len(test_images) - 1
    fails_naming(ham_workflow(root, ham_dir, TRAIN_CLASSIFIER + ["evaluate.yaml"], eval_dir=str(tmp_path / "eval_off")), bad)

    interpret_dir = tmp_path / "interpret"
    run_workflow(ham_workflow(root, ham_dir, INTERPRET, interpret_dir=str(interpret_dir), skip_bad_samples=True))
    assert {row["image_id"] for row in read_csv(interpret_dir / "samples.csv")} == {p.stem for p in test_images[1:]}
    assert [row["file"] for row in read_csv(interpret_dir / "skipped.csv")] == [str(bad)]
    fails_naming(ham_workflow(root, ham_dir, INTERPRET, interpret_dir=str(tmp_path / "interpret_off")), bad)

    folder = tmp_path / "new_images"
    folder.mkdir()
    for path in test_images[:3]:  # the truncated JPEG and two good ones
        shutil.copy(path, folder / path.name)
    (folder / "notes.png").write_text("not an image")
    out = tmp_path / "inference"
    run_workflow(ham_workflow(root, ham_dir, INFER, input=str(folder), inference_dir=str(out), skip_bad_samples=True))
    assert {row["image_id"] for row in read_csv(out / "predictions.csv")} == {p.stem for p in test_images[1:3]}
    skipped = {Path(row["file"]).name: row["cause"] for row in read_csv(out / "skipped.csv")}
    assert set(skipped) == {bad.name, "notes.png"} and "truncated" in skipped[bad.name] and "cannot identify" in skipped["notes.png"]
    fails_naming(ham_workflow(root, ham_dir, INFER, input=str(folder), inference_dir=str(tmp_path / "off")),
                 folder / bad.name)
