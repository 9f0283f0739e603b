"""The chestx_segx bundle's workflows on tiny synthetic data: properties, multi-label thresholds, DICOM in and out."""

from __future__ import annotations

import csv
import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from conftest import TRAIN_CONFIGS, chest_workflow, run_workflow
from test_dicom_results import dciodvfy_errors
from segx_monai.data.chestx_det import CHESTX_DET10_FINDINGS
from segx_monai.io.dicom import is_dicom


def test_classifier_saves_validation_thresholds_for_every_finding(trained_chest_bundle):
    saved = json.loads((trained_chest_bundle / "models" / "thresholds.json").read_text())
    assert list(saved["thresholds"]) == list(CHESTX_DET10_FINDINGS)
    assert all(0 <= t <= 1 for t in saved["thresholds"].values())
    state = torch.load(trained_chest_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["class_layers.out.weight"].shape == (10, 1024) and state["features.conv0.weight"].shape[1] == 1


@pytest.mark.parametrize("network, metric", [("classifier", "test_auroc_per_finding"), ("segmenter", "test_dice")])
def test_evaluate(trained_chest_bundle, chest_dir, network, metric):
    workflow = run_workflow(chest_workflow(trained_chest_bundle, chest_dir, TRAIN_CONFIGS[network] + ["evaluate.yaml"]))
    assert metric in workflow.parser.get_parsed_content("validate#evaluator").state.metrics


def test_interpretation_rows_per_predicted_finding(trained_chest_bundle, chest_dir, tmp_path):
    out = tmp_path / "interpret"
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["inference.yaml", "interpret.yaml"], interpret_dir=str(out), finding_thresholds=[0.0] * 10))
    rows = list(csv.DictReader(open(out / "samples.csv")))
    n_test = len(json.loads(next((trained_chest_bundle / "datalists").glob("*.json")).read_text())["test"])
    assert len(rows) == 10 * n_test  # every finding is "positive" at threshold 0: one row each
    assert {r["finding"] for r in rows} == set(CHESTX_DET10_FINDINGS)
    for row in rows:
        assert row["iou_at_q_raw"] != "" and 0 <= float(row["ciou"]) <= 1
        assert row["correct"] == str(int(row["finding"] in row["label"].split(";")))
    assert (out / "report.html").is_file() and "by_finding" in json.loads((out / "summary.json").read_text())


def test_inference_on_a_dicom_folder_writes_seg_parametric_maps_and_reports(trained_chest_bundle, chest_dir, tmp_path):
    out = tmp_path / "inference"
    sources = sorted(p for p in (chest_dir / "dicom").iterdir() if is_dicom(p))[:8]  # a sample of the encodings the set rotates through
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["inference.yaml"], workflow_type="infer",
                                input=[str(p) for p in sources], inference_dir=str(out), finding_thresholds=[0.0] * 10))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted({r["image_id"] for r in rows}) == sorted(p.stem for p in sources)
    source = pydicom.dcmread(sources[0])
    study = out / "dicom" / source.StudyInstanceUID
    seg = hd.seg.segread(study / f"{sources[0].stem}_seg.dcm")
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    lungs = np.asarray(Image.open(out / "masks" / f"{sources[0].stem}_lungs.png")) > 0
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0, ..., 0], lungs)
    pm = pydicom.dcmread(study / f"{sources[0].stem}_{CHESTX_DET10_FINDINGS[0]}_segx_pm.dcm")
    assert pm.pixel_array.shape == (source.Rows, source.Columns)
    groups = hd.sr.srread(study / "report_sr.dcm").content.get_planar_roi_measurement_groups()
    assert {g.finding_type.meaning for g in groups} == set(CHESTX_DET10_FINDINGS)  # threshold 0: every finding
    assert not list(out.rglob("*_sc.dcm"))  # dicom_overlays is off by default
    for path in (out / "dicom").rglob("*.dcm"):
        assert dciodvfy_errors(path) == [], path


def _clinical_dicom(path, picture: np.ndarray, kind: str) -> None:
    """``picture`` (8-bit) as a file from an archive, built attribute by attribute with pydicom (no project writer):
    ``cr``: MONOCHROME1 CR, 16 bits, rescale; ``jpeg``: JPEG baseline (lossy), extension-less; ``voi_lut``: 12 bits
    stored with a 12 -> 16-bit VOI LUT that maps them back to the picture's grey levels."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.ComputedRadiographyImageStorage if kind == "cr" else pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (pydicom.uid.generate_uid() for _ in range(3))
    ds.PatientID, ds.Modality, ds.ViewPosition = f"P-{kind}", "CR" if kind == "cr" else "DX", "PA"
    ds.Rows, ds.Columns = picture.shape
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if kind == "cr" else "MONOCHROME2"
    level = picture.astype(np.uint32)
    if kind == "cr":  # bone bright once inverted: stored low where the picture is white
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelData = (257 * (255 - level)).astype("<u2").tobytes()
    elif kind == "voi_lut":
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        lut = pydicom.Dataset()
        lut.LUTDescriptor = [4096, 0, 16]
        lut.LUTData = (257 * (np.arange(4096) // 16)).astype("<u2").tobytes()
        ds.VOILUTSequence = [lut]
        ds.WindowCenter, ds.WindowWidth = "100", "50"  # the VOI LUT comes first
        ds.PixelData = (16 * level).astype("<u2").tobytes()
    else:
        import io

        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pydicom.encaps.encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_clinical_dicoms_infer_like_their_pngs(trained_chest_bundle, chest_dir, tmp_path):
    """Archive-style DICOMs (MONOCHROME1 CR, JPEG baseline, 16-bit with a VOI LUT) give the lung masks and SegX maps of
    the same pictures loaded from PNG: same orientation, same values (within JPEG's loss)."""
    pngs, dicoms = tmp_path / "png", tmp_path / "dicom"
    pngs.mkdir(), dicoms.mkdir()
    sources = sorted((chest_dir / "test_data").glob("*.png"))[:3]
    names = {"cr": "CR0001.dcm", "jpeg": "IM0002", "voi_lut": "DX0003.dcm"}
    for (kind, name), source in zip(names.items(), sources):
        picture = np.asarray(Image.open(source))
        Image.fromarray(picture).save(pngs / f"{name.split('.')[0]}.png")
        _clinical_dicom(dicoms / name, picture, kind)
    outputs = {}
    for folder in (pngs, dicoms):
        outputs[folder.name] = tmp_path / f"inference_{folder.name}"
        run_workflow(chest_workflow(trained_chest_bundle, chest_dir, ["inference.yaml"], workflow_type="infer",
                                    input=str(folder), inference_dir=str(outputs[folder.name]), finding_thresholds=[0.0] * 10))
    for kind, name in names.items():
        stem = name.split(".")[0]
        lungs = [np.asarray(Image.open(outputs[f] / "masks" / f"{stem}_lungs.png")) > 0 for f in ("png", "dicom")]
        assert not np.array_equal(lungs[0], lungs[0].T)  # the lungs are not symmetric under a transpose: this could fail
        maps = [nib.load(outputs[f] / "maps" / f"{stem}_Effusion_segx.nii.gz").get_fdata() for f in ("png", "dicom")]
        raw = [nib.load(outputs[f] / "maps" / f"{stem}_Effusion_raw.nii.gz").get_fdata() for f in ("png", "dicom")]
        if kind == "jpeg":
            assert (lungs[0] & lungs[1]).sum() / max(1, (lungs[0] | lungs[1]).sum()) > 0.9
            assert np.abs(raw[1] - raw[0]).mean() < 0.05 and np.abs(maps[1] - maps[0]).mean() < 0.05
        else:
            np.testing.assert_array_equal(lungs[1], lungs[0])
            np.testing.assert_allclose(raw[1], raw[0], atol=1e-4)
            np.testing.assert_allclose(maps[1], maps[0], atol=1e-4)
        study = pydicom.dcmread(dicoms / name).StudyInstanceUID
        assert (outputs["dicom"] / "dicom" / study / f"{stem}_Effusion_segx_pm.dcm").is_file()
