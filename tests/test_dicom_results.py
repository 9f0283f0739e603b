"""DICOM results (Segmentation, Parametric Map, Secondary Capture, Comprehensive SR): valid for dciodvfy, read back
equal with highdicom / pydicom, at the source's geometry; the inference handler writes them for DICOM inputs only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.transforms import LoadImage
from PIL import Image

import segx_monai
from segx_monai.data.readers import SOURCE_SHAPE, rgb_reader
from segx_monai.handlers.contract import Columns, OutputKeys
from segx_monai.handlers.dicom_results import DicomResultsError, DicomResultsWriter
from segx_monai.io import dicom_results as dr
from segx_monai.io.dicom_writer import write_dicom_variant
from test_run_safety import kill, wait_for

ROWS, COLUMNS = 48, 80  # non-square
REPO = Path(__file__).resolve().parents[1]


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for ``path``; the test fails when dciodvfy is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy not found: install Debian's dicom3tools (bash scripts/ci_dicom_tools.sh)")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _source(tmp_path: Path, kind: str) -> pydicom.Dataset:
    """``cr``: a MONOCHROME1 CR with Imager Pixel Spacing only (the project's writer); ``dx``: a MONOCHROME2 DX with
    Pixel Spacing (set with pydicom); ``bare``: a CR with neither spacing nor Patient Orientation, nor the empty
    patient and study attributes an archive drops."""
    picture = np.linspace(0, 255, ROWS * COLUMNS).reshape(ROWS, COLUMNS).astype(np.uint8)
    path = tmp_path / f"{kind}.dcm"
    if kind == "cr":
        write_dicom_variant(picture, path, photometric="MONOCHROME1", modality="CR", bits=12, pixel_spacing=(0.2, 0.3))
    else:
        ds = write_dicom_variant(picture, path, modality="CR" if kind == "bare" else "DX")
        if kind == "dx":
            ds.PixelSpacing = [0.15, 0.25]
            ds.PatientName, ds.StudyDate = "Doe^Jane", "20260102"
        else:
            for keyword in ("PatientOrientation", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID"):
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _spacing(source: pydicom.Dataset) -> list[float]:
    """As written: the source's, 1 mm when it has none."""
    return [float(v) for v in source.get("PixelSpacing") or source.get("ImagerPixelSpacing") or (1.0, 1.0)]


def _mask() -> np.ndarray:
    """An L-shaped region: a transpose, a flip or a resize would move it."""
    mask = np.zeros((ROWS, COLUMNS), bool)
    mask[5:40, 3:12] = True
    mask[30:40, 3:60] = True
    return mask


def _common(ds: pydicom.Dataset, source: pydicom.Dataset, series: dr.Series) -> None:
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert ds.SeriesNumber == series.number and ds.SeriesDescription.startswith(series.description)
    assert ds.Manufacturer == "segx-monai" and segx_monai.__version__ in ds.SoftwareVersions
    assert ds.ContentDate and ds.ContentTime


@pytest.mark.parametrize("kind", ["cr", "dx", "bare"])
def test_segmentation_overlays_the_source_pixel_for_pixel(tmp_path, kind):
    source = _source(tmp_path, kind)
    seg = dr.region_segmentation(source, _mask(), dr.REGIONS["lungs"], series_uid=hd.UID())
    dr.save_atomic(seg, tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    _common(back, source, dr.SERIES["seg"])
    assert (back.Rows, back.Columns) == (ROWS, COLUMNS)
    pixels = back.get_pixels_by_source_instance([source.SOPInstanceUID])  # (frames, rows, columns, segments)
    np.testing.assert_array_equal(pixels[0, ..., 0], _mask())
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == _spacing(source)
    reference = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and reference.SpatialLocationsPreserved == "YES"
    segment = back.SegmentSequence[0]
    assert segment.SegmentLabel == "Lungs" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SNOMED Lung
    assert segment.SegmentAlgorithmName.startswith("segx-monai") and back.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"


def test_segmentation_of_a_lesion_and_a_wrong_size_is_refused(tmp_path):
    source = _source(tmp_path, "dx")
    seg = dr.region_segmentation(source, _mask(), dr.REGIONS["lesion"], series_uid=hd.UID())
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SNOMED Lesion
    assert seg.SegmentSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Skin"
    with pytest.raises(ValueError, match=f"{source.SOPInstanceUID}.*expected its rows x columns \\({ROWS}, {COLUMNS}\\)"):
        dr.region_segmentation(source, _mask().T, dr.REGIONS["lungs"], series_uid=hd.UID())


@pytest.mark.parametrize("kind", ["cr", "dx", "bare"])
def test_parametric_map_keeps_the_float_values_and_their_mapping(tmp_path, kind):
    source = _source(tmp_path, kind)
    values = (np.random.default_rng(0).standard_normal((ROWS, COLUMNS)) * 1e-3).astype(np.float32)  # negative too
    pm = dr.segx_parametric_map(source, values, explainer="gradient_shap", finding="Effusion", series_uid=hd.UID())
    dr.save_atomic(pm, tmp_path / "pm.dcm")
    assert dciodvfy_errors(tmp_path / "pm.dcm") == []
    back = pydicom.dcmread(tmp_path / "pm.dcm")
    _common(back, source, dr.SERIES["pm"])
    assert back.pixel_array.dtype == np.float32
    np.testing.assert_array_equal(back.pixel_array, values)
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == pytest.approx(values.min())
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(values.max())
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert "gradient_shap" in mapping.LUTExplanation and "Effusion" in mapping.LUTExplanation
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == _spacing(source)
    reference = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("kind", ["cr", "dx", "bare"])
def test_secondary_capture_at_the_source_size(tmp_path, kind):
    source = _source(tmp_path, kind)
    rgb = np.random.default_rng(1).integers(0, 256, (ROWS, COLUMNS, 3), dtype=np.uint8)
    sc = dr.overlay_capture(source, rgb, finding="Effusion", series_uid=hd.UID())
    dr.save_atomic(sc, tmp_path / "sc.dcm")
    assert dciodvfy_errors(tmp_path / "sc.dcm") == []
    back = pydicom.dcmread(tmp_path / "sc.dcm")
    _common(back, source, dr.SERIES["sc"])
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert back.SOPInstanceUID == sc.SOPInstanceUID == back.file_meta.MediaStorageSOPInstanceUID != source.SOPInstanceUID
    assert (back.PatientName or "", back.StudyDate or "") == (source.get("PatientName") or "", source.get("StudyDate") or "")
    assert back.SeriesDescription == "SegX overlay Effusion" and back.ImageType[0] == "DERIVED"
    assert back.PatientOrientation == source.get("PatientOrientation", "")  # empty when unknown
    np.testing.assert_array_equal(back.pixel_array, rgb)
    assert [float(v) for v in back.PixelSpacing] == _spacing(source)
    for sequence in (back.ReferencedImageSequence, back.SourceImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    with pytest.raises(ValueError, match="RGB uint8"):
        dr.overlay_capture(source, rgb[..., 0], finding=None, series_uid=hd.UID())


def test_report_holds_each_finding_with_its_references(tmp_path):
    source = _source(tmp_path, "dx")
    seg = dr.region_segmentation(source, _mask(), dr.REGIONS["lungs"], series_uid=hd.UID())
    maps = [dr.segx_parametric_map(source, np.zeros((ROWS, COLUMNS), np.float32), explainer="gradcam", finding=f,
                                   series_uid=hd.UID()) for f in ("Effusion", "Nodule")]
    findings = [
        dr.ExplainedFinding(source, "Effusion", 0.8, False, seg, maps[0], 0.4, {"ciou": 0.25, "crelevance_mass": 0.75}),
        dr.ExplainedFinding(source, "Nodule", 0.6, True, seg, maps[1], 0.5, {"ciou": float("nan")}),  # undefined: left out
    ]
    sr = dr.measurement_report(findings, series_uid=hd.UID())
    dr.save_atomic(sr, tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    back = hd.sr.srread(tmp_path / "sr.dcm")
    _common(back, source, dr.SERIES["sr"])
    groups = back.content.get_planar_roi_measurement_groups()
    assert [g.finding_type.meaning for g in groups] == ["Effusion", "Nodule"]
    measured = [{m.name.value: m.value for m in g.get_measurements()} for g in groups]
    assert measured == [{"probability": 0.8, "threshold": 0.4, "ciou": 0.25, "crelevance_mass": 0.75},
                        {"probability": 0.6, "threshold": 0.5}]
    assert [g.get_qualitative_evaluations()[0].value.meaning for g in groups] == ["No", "Yes"]
    images = {m.name.value: [r.referenced_sop_instance_uid for r in m.referenced_images] for m in groups[0].get_measurements()}
    assert images["probability"] == [source.SOPInstanceUID]  # the scores refer to the source and to the SegX map
    assert images["ciou"] == [source.SOPInstanceUID, maps[0].SOPInstanceUID]
    for group in groups:
        assert group.referenced_segmentation_frame is not None
        content = group[0].ContentSequence
        frame = next(i for i in content if i.ConceptNameCodeSequence[0].CodeValue == "121214")  # Referenced Segmentation Frame
        assert frame.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for study in back.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert referenced == {source.SOPInstanceUID, seg.SOPInstanceUID, maps[0].SOPInstanceUID, maps[1].SOPInstanceUID}
    empty = dr.measurement_report([], sources=[source], series_uid=hd.UID())  # a study without a finding: its images
    dr.save_atomic(empty, tmp_path / "empty_sr.dcm")
    assert dciodvfy_errors(tmp_path / "empty_sr.dcm") == []
    [group] = hd.sr.srread(tmp_path / "empty_sr.dcm").content.get_image_measurement_groups()
    assert group.finding_type.meaning == "No finding" and group.get_measurements() == []
    other = _source(tmp_path, "cr")
    with pytest.raises(ValueError, match="one study"):
        dr.measurement_report(findings, sources=[other], series_uid=hd.UID())


def _engine(tmp_path: Path) -> tuple[Engine, pydicom.Dataset]:
    """One iteration of two inputs, a MONOCHROME1 DICOM and a PNG, with 16x16 outputs: the region is the top-left
    quarter (rows < 8, columns < 8), the SegX map 1 there."""
    source = _source(tmp_path, "cr")
    Image.fromarray(np.zeros((ROWS, COLUMNS), np.uint8)).save(tmp_path / "picture.png")
    region = torch.zeros(1, 16, 16)
    region[:, :8, :8] = 1
    row = {Columns.FINDING: "Effusion", Columns.PROBABILITY: 0.7, Columns.THRESHOLD: 0.5, Columns.CIOU: 0.3, Columns.REVIEW: 1}
    engine = Engine(lambda e, b: None)
    engine.state.batch = [{"image_id": "cr", "image_path": str(tmp_path / "cr.dcm"), "original_size": torch.tensor([ROWS, COLUMNS])},
                          {"image_id": "picture", "image_path": str(tmp_path / "picture.png"), "original_size": torch.tensor([ROWS, COLUMNS])}]
    engine.state.output = [{OutputKeys.REGION_PROB: region, OutputKeys.SEGX_MAP: region[None].clone(), OutputKeys.ROWS: [dict(row)]}
                           for _ in range(2)]
    return engine, source


@pytest.mark.parametrize("overlays", [False, True])
def test_handler_writes_the_objects_of_a_dicom_input_only(tmp_path, overlays):
    engine, source = _engine(tmp_path)
    writer = DicomResultsWriter(tmp_path / "dicom", region="lungs", explainer="gradcam", overlays=overlays)
    writer(engine)
    writer.write_reports(engine)
    study = tmp_path / "dicom" / source.StudyInstanceUID
    expected = {"cr_seg.dcm", "cr_Effusion_segx_pm.dcm", "report_sr.dcm"} | ({"cr_Effusion_segx_sc.dcm"} if overlays else set())
    assert {p.name for p in (tmp_path / "dicom").rglob("*") if p.is_file()} == expected  # nothing for the PNG, no partial file
    for name in expected:
        assert dciodvfy_errors(study / name) == [], name
    # 16 -> 48 rows and 16 -> 80 columns (bilinear, half-pixel centres): the region's edge at 8 lands between rows 23
    # and 24 (7.33 -> 2/3, 7.67 -> 1/3 of the region) and between columns 39 and 40 (7.4 -> 0.6, 7.6 -> 0.4); at their
    # corner 2/3 x 0.6 = 0.4, below the threshold 0.5 (row 23, column 38: 2/3 x 0.8, above)
    expected_mask = np.zeros((ROWS, COLUMNS), bool)
    expected_mask[:24, :40] = True
    expected_mask[23, 39] = False
    seg = hd.seg.segread(study / "cr_seg.dcm")
    np.testing.assert_array_equal(seg.get_pixels_by_source_instance([source.SOPInstanceUID])[0, ..., 0], expected_mask)
    pm = pydicom.dcmread(study / "cr_Effusion_segx_pm.dcm")
    assert pm.pixel_array.shape == (ROWS, COLUMNS) and pm.pixel_array[0, 0] == 1 and pm.pixel_array[-1, -1] == 0
    assert pm.pixel_array[23, 39] == pytest.approx(2 / 3 * 0.6, abs=1e-6)
    report = hd.sr.srread(study / "report_sr.dcm")
    group = report.content.get_planar_roi_measurement_groups()[0]
    assert {m.name.value: m.value for m in group.get_measurements()} == {"probability": 0.7, "threshold": 0.5, "ciou": 0.3}
    if overlays:
        sc = pydicom.dcmread(study / "cr_Effusion_segx_sc.dcm")
        assert sc.pixel_array.shape == (ROWS, COLUMNS, 3)
        assert not np.array_equal(sc.pixel_array[0, 0], sc.pixel_array[-1, -1])  # heat at the top left only


@pytest.mark.parametrize("bundle, region", [("chestx_segx", "Lungs"), ("ham_segx", "Skin lesion")])
@pytest.mark.parametrize("overlays", [False, True])
def test_both_bundles_write_dicom_results(tmp_path, bundle, region, overlays):
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(tmp_path), "dicom_overlays": overlays, "region_threshold": 0.3})
    writers = [w for w in parser.get_parsed_content("writers", lazy=False) if isinstance(w, DicomResultsWriter)]
    assert len(writers) == 1 and writers[0].overlays is overlays and writers[0].region.label == region
    assert writers[0].threshold == 0.3 and writers[0].explainer == parser.get_parsed_content("explainer_name")
    assert writers[0].output_dir == tmp_path / "inference" / "dicom"


@pytest.mark.parametrize("colour", [False, True])
def test_the_skin_bundle_reads_a_dicom_like_its_png(tmp_path, colour):
    """rgb_reader (the skin bundle's) loads a DICOM, grey or RGB, as the PNG of the same picture, reduced alike."""
    rng = np.random.default_rng(2)
    picture = rng.integers(0, 256, (ROWS, COLUMNS, 3) if colour else (ROWS, COLUMNS), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "picture.png")
    if colour:
        ds = write_dicom_variant(picture[..., 0], tmp_path / "picture.dcm")
        ds.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
        ds.set_pixel_data(picture, "RGB", 8, generate_instance_uid=False)
        ds.save_as(tmp_path / "picture.dcm", enforce_file_format=True)
    else:
        write_dicom_variant(picture, tmp_path / "picture.dcm")
    load = LoadImage(reader=rgb_reader(8), image_only=True)  # reduced by 3 to 16 x 27 (Pillow rounds up), twice the image size or more
    png, dicom = load(str(tmp_path / "picture.png")), load(str(tmp_path / "picture.dcm"))
    assert tuple(dicom.shape) == tuple(png.shape) == (16, 27, 3)
    np.testing.assert_array_equal(np.asarray(dicom), np.asarray(png))
    assert tuple(dicom.meta[SOURCE_SHAPE]) == (ROWS, COLUMNS)


def test_handler_error_names_the_input_and_its_study(tmp_path):
    engine, source = _engine(tmp_path)
    engine.state.batch[0]["original_size"] = torch.tensor([COLUMNS, ROWS])  # not the file's size
    writer = DicomResultsWriter(tmp_path / "dicom", region="lungs", explainer="gradcam")
    with pytest.raises(DicomResultsError, match=f"cr.dcm \\(study {source.StudyInstanceUID}, series .*expected its rows x columns"):
        writer(engine)
    assert not list((tmp_path / "dicom").rglob("*.dcm"))
    with pytest.raises(ValueError, match="unknown region 'heart'"):
        DicomResultsWriter(tmp_path / "dicom", region="heart", explainer="gradcam")


KILLED_WRITER = """
import sys
import numpy as np
import pydicom
from segx_monai.io.dicom_results import save_atomic
ds = pydicom.dcmread(sys.argv[1])
n = 0
while True:  # rewrites the object with ever larger pixel data until killed
    n += 1
    ds.FloatPixelData = np.full(ds.Rows * ds.Columns * n, n, np.float32).tobytes()
    save_atomic(ds, sys.argv[2])
    print(n, flush=True)
"""


def test_a_result_killed_while_written_leaves_the_previous_complete_file(tmp_path):
    """SIGKILL during rewrites of a Parametric Map: the file read back is always a whole earlier version."""
    source = _source(tmp_path, "dx")
    pm = dr.segx_parametric_map(source, np.ones((source.Rows, source.Columns), np.float32), explainer="gradcam",
                                finding="Nodule", series_uid=hd.UID())
    first, path = tmp_path / "first.dcm", tmp_path / "result_pm.dcm"
    dr.save_atomic(pm, first)
    shutil.copy(first, path)
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(first), str(path)], stdout=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        for _ in range(40):  # some rewrites done
            child.stdout.readline()
        size = path.stat().st_size
        wait_for(lambda: path.stat().st_size != size, child, timeout=60, poll=0)  # the next one reaches the file
    finally:
        kill(child)
    written = pydicom.dcmread(path)
    n = int(np.frombuffer(written.FloatPixelData, np.float32)[0])
    assert n >= 1 and len(written.FloatPixelData) == 4 * written.Rows * written.Columns * n  # whole, not cut
