"""DICOMweb in and out against a real Orthanc (scripts/ci_orthanc.sh, or the server at SEGX_TEST_DICOMWEB_URL): studies
fetched as the folder input reads them, results stored back one study at a time and queried back, bad studies named."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from monai.bundle import ConfigParser
from pydicom.uid import generate_uid

from conftest import CHEST_CONFIGS, INFER, chest_workflow, run_workflow
from orthanc import dicomweb_url, own_orthanc  # noqa: F401  (fixtures)
from segx_monai.data.datalist import image_items
from segx_monai.io.dicom import read_dicom
from segx_monai.io.dicom_results import overlay_capture, save_atomic
from segx_monai.io.dicom_writer import TRANSFER_SYNTAXES, write_dicom_variant
from segx_monai.io.dicomweb import DicomwebError, DicomwebUnreachable, fetch_studies, store_studies

PICTURE = (np.add.outer(np.arange(64), 3 * np.arange(64)) % 256).astype(np.uint8)  # 64x64, not symmetric
# the refusing server's filter: instances whose Image Comments say "refuse" are not stored
REFUSE_LUA = "function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.ImageComments ~= 'refuse'\nend\n"


def write_study(folder: Path, n_series: int = 2, **variant) -> tuple[str, list[Path]]:
    """A study of ``n_series`` one-image series (64x64, write_dicom_variant ``variant``) in ``folder``: UID, files."""
    study, files = generate_uid(), []
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(n_series):
        files.append(folder / f"{study[-8:]}_{n}.dcm")
        write_dicom_variant(PICTURE, files[-1], study_uid=study, patient_id="P1", **variant)
    return study, files


def bad_copy(source: Path, path: Path, kind: str) -> Path:
    """``source`` as a new instance of a new series of its study: ``nopixels`` without Pixel Data, ``frames`` with
    two frames, ``refuse`` marked for the refusing server's filter."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if kind == "nopixels":
        del ds.PixelData
    elif kind == "frames":
        ds.NumberOfFrames, ds.PixelData = 2, ds.PixelData * 2
    else:
        ds.ImageComments = "refuse"
    ds.save_as(path, enforce_file_format=True)
    return path


def push(url: str, *files: Path) -> None:
    """Store ``files`` on the server with dicomweb-client, study by study (the inputs of the tests)."""
    datasets = [pydicom.dcmread(f) for f in files]
    for study in {ds.StudyInstanceUID for ds in datasets}:
        DICOMwebClient(url).store_instances([ds for ds in datasets if ds.StudyInstanceUID == study], study_instance_uid=study)


def held(url: str, study: str) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of the instances the server lists in ``study`` (QIDO-RS)."""
    found = DICOMwebClient(url).search_for_instances(study_instance_uid=study, fields=["SOPClassUID"])
    return {d.SOPInstanceUID: d.SOPClassUID for d in map(pydicom.Dataset.from_json, found)}


def test_fetched_studies_are_laid_out_and_read_as_the_folder_input(dicomweb_url, tmp_path):
    """Given studies, or all the server holds: one file per instance in <study>/<series>/<SOP UID>.dcm, the same pictures
    and UIDs as the files pushed, listed by the bundles' folder input; a second fetch replaces the folder."""
    study_a, files_a = write_study(tmp_path / "a", 2, photometric="MONOCHROME1", bits=12)
    study_b, files_b = write_study(tmp_path / "b", 1, transfer_syntax="jpeg_lossless")
    push(dicomweb_url, *files_a, *files_b)
    out = tmp_path / "fetched"
    fetched = fetch_studies(dicomweb_url, out, [study_a, study_b])
    assert fetched.studies == [study_a, study_b] and fetched.skipped == [] and fetched.folder == str(out)
    for source in files_a + files_b:
        ds = pydicom.dcmread(source)
        copy = out / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        np.testing.assert_array_equal(read_dicom(copy)[0], read_dicom(source)[0])
    items = image_items(str(out))
    assert sorted(i["image_id"] for i in items) == sorted(pydicom.dcmread(f).SOPInstanceUID for f in files_a + files_b)

    only_b = fetch_studies(dicomweb_url, out, [study_b])
    assert only_b.studies == [study_b] and sorted(p.name for p in out.iterdir()) == [study_b]  # a's folder is gone
    everything = fetch_studies(dicomweb_url, tmp_path / "all", skip_bad=True)  # the shared server may hold bad studies
    listed = {pydicom.Dataset.from_json(s).StudyInstanceUID for s in DICOMwebClient(dicomweb_url).search_for_studies()}
    assert {study_a, study_b} <= set(everything.studies) and set(everything.studies) | {s["file"].split()[-1] for s in everything.skipped} == listed


def test_every_transfer_syntax_is_fetched_as_stored(dicomweb_url, tmp_path):
    """Compressed radiographs (JPEG 2000, JPEG-LS, RLE, ...) come back in the transfer syntax the server holds, the same
    pictures: a server that cannot transcode them (Orthanc without JPEG 2000) would refuse a request for another."""
    studies = {syntax: write_study(tmp_path / syntax, 1, transfer_syntax=syntax) for syntax in TRANSFER_SYNTAXES}
    push(dicomweb_url, *(f for _, files in studies.values() for f in files))
    fetched = fetch_studies(dicomweb_url, tmp_path / "fetched", [study for study, _ in studies.values()])
    assert len(fetched.studies) == len(TRANSFER_SYNTAXES)
    for syntax, (study, (source,)) in studies.items():
        ds = pydicom.dcmread(source)
        copy = tmp_path / "fetched" / study / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(copy).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax], syntax
        np.testing.assert_array_equal(read_dicom(copy)[0], read_dicom(source)[0])


def test_only_the_radiographs_series_are_fetched_unless_asked(dicomweb_url, tmp_path):
    """Results stored beside a radiograph (a Secondary Capture, modality OT) are not inferred again; modalities None
    fetches every series; a study without a radiograph is an error naming it."""
    study, files = write_study(tmp_path / "study", 1)
    source, other_study = pydicom.dcmread(files[0]), pydicom.dcmread(files[0])
    other_study.StudyInstanceUID = generate_uid()
    overlay, alone = tmp_path / "study" / "overlay.dcm", tmp_path / "alone.dcm"
    for study_source, path in ((source, overlay), (other_study, alone)):
        rgb = np.zeros((study_source.Rows, study_source.Columns, 3), np.uint8)
        save_atomic(overlay_capture(study_source, rgb, finding=None, series_uid=generate_uid()), path)
    push(dicomweb_url, *files, overlay, alone)
    series = {ds.SeriesInstanceUID: ds.Modality for ds in map(pydicom.dcmread, [*files, overlay])}
    for modalities, expected in ((("CR", "DX"), ["DX"]), (None, ["DX", "OT"])):
        fetch_studies(dicomweb_url, tmp_path / "out", [study], modalities=modalities)
        assert sorted(series[p.name] for p in (tmp_path / "out" / study).iterdir()) == expected
    lone_study = pydicom.dcmread(alone).StudyInstanceUID
    with pytest.raises(DicomwebError, match=f"study {lone_study}: no series of modality CR, DX; it has OT"):
        fetch_studies(dicomweb_url, tmp_path / "out", [lone_study])


@pytest.mark.parametrize("kind, cause", [("nopixels", "no Pixel Data"), ("frames", "2 frames; expected a 2D single-frame image")])
def test_a_bad_study_is_named_or_skipped_and_the_others_fetched(dicomweb_url, tmp_path, kind, cause):
    good, good_files = write_study(tmp_path / "good", 1)
    bad, bad_files = write_study(tmp_path / "bad", 1)
    broken = bad_copy(bad_files[0], tmp_path / "bad" / "broken.dcm", kind)
    push(dicomweb_url, *good_files, *bad_files, broken)
    series = pydicom.dcmread(broken).SeriesInstanceUID
    with pytest.raises(DicomwebError) as info:
        fetch_studies(dicomweb_url, tmp_path / "strict", [good, bad])
    assert f"{dicomweb_url}: study {bad}, series {series}" in str(info.value) and cause in str(info.value)
    assert not (tmp_path / "strict").exists()  # nothing fetched is left in place

    fetched = fetch_studies(dicomweb_url, tmp_path / "skipping", [bad, good], skip_bad=True)
    assert fetched.studies == [good] and len(fetched.skipped) == 1
    assert fetched.skipped[0]["file"] == f"{dicomweb_url} study {bad}" and cause in fetched.skipped[0]["cause"]
    assert [p.name for p in (tmp_path / "skipping").iterdir()] == [good]


def test_an_unreachable_server_is_an_error_naming_it_also_when_skipping(tmp_path):
    with socket.socket() as s:  # a loopback port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/dicom-web"
    write_study(tmp_path / "out", 1)
    for skip in (False, True):
        with pytest.raises(DicomwebUnreachable, match=f"{url}: the DICOMweb server cannot be reached"):
            fetch_studies(url, tmp_path / "in", ["1.2.3"], skip_bad=skip)
        with pytest.raises(DicomwebUnreachable, match=f"{url}: the DICOMweb server cannot be reached"):
            store_studies(url, tmp_path / "out", skip_bad=skip)
    assert not (tmp_path / "in").exists()


def test_stored_studies_are_queried_back(dicomweb_url, tmp_path):
    """One STOW-RS per study; only the studies asked for, not a killed write's partial file; QIDO-RS lists every
    instance with its SOP class."""
    study_a, files_a = write_study(tmp_path / "results" / "a", 2)
    study_b, files_b = write_study(tmp_path / "results" / "b", 1)
    partial = tmp_path / "results" / "a" / f".{files_a[0].name}.123.partial"  # what a write killed midway leaves
    partial.write_bytes(files_a[0].read_bytes()[:300])
    stored = store_studies(dicomweb_url, tmp_path / "results", [study_a])
    assert stored.studies == [study_a] and stored.skipped == []
    assert held(dicomweb_url, study_a) == {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).SOPClassUID for f in files_a}
    assert held(dicomweb_url, study_b) == {}
    assert store_studies(dicomweb_url, tmp_path / "results").studies == [study_a, study_b]  # a again: already stored
    assert len(held(dicomweb_url, study_b)) == 1


def test_files_that_cannot_be_stored_whole_are_refused_before_sending(dicomweb_url, tmp_path):
    study, files = write_study(tmp_path / "results", 2)
    twin = pydicom.dcmread(files[0])
    twin.save_as(tmp_path / "results" / "twin.dcm", enforce_file_format=True)  # the same instance in a second file
    with pytest.raises(DicomwebError, match=f"study {study}: SOP Instance UID {twin.SOPInstanceUID} in 2 files"):
        store_studies(dicomweb_url, tmp_path / "results")
    assert held(dicomweb_url, study) == {}  # nothing sent


def test_a_study_the_server_refuses_in_part_is_not_left_half_stored(own_orthanc, tmp_path):
    url = own_orthanc(REFUSE_LUA)
    good, _ = write_study(tmp_path / "results" / "good", 1)
    refused, files = write_study(tmp_path / "results" / "refused", 2)
    marked = bad_copy(files[0], tmp_path / "results" / "refused" / "marked.dcm", "refuse")
    with pytest.raises(DicomwebError) as info:
        store_studies(url, tmp_path / "results", [refused])
    message = str(info.value)
    assert f"{url}: study {refused}: the server refused 1 of its 3 instances" in message
    assert pydicom.dcmread(marked).SOPInstanceUID in message and "the 2 instances it stored were deleted again" in message
    assert held(url, refused) == {}

    stored = store_studies(url, tmp_path / "results", skip_bad=True)
    assert stored.studies == [good] and [s["file"] for s in stored.skipped] == [f"{url} study {refused}"]
    assert len(held(url, good)) == 1 and held(url, refused) == {}

    push(url, files[1])  # stored before (an earlier run): kept, only what this request stored is deleted
    with pytest.raises(DicomwebError, match="the 1 instances it stored were deleted again"):
        store_studies(url, tmp_path / "results", [refused])
    assert list(held(url, refused)) == [pydicom.dcmread(files[1]).SOPInstanceUID]


def test_dicomweb_keys_of_the_chest_inference(tmp_path):
    """dicomweb_url null reads `input` and fetches nothing; dicomweb_store False adds no step after the inference."""
    parser = ConfigParser()
    parser.read_config([str(CHEST_CONFIGS / c) for c in INFER])
    parser.update({"input": [str(tmp_path / "x.png")], "inference_dir": str(tmp_path / "inference")})
    assert parser.get_parsed_content("input_images") == [str(tmp_path / "x.png")]
    assert parser.get_parsed_content("dicomweb_input").folder is None and parser.get_parsed_content("dicomweb_output") is None
    parser.update({"dicomweb_store": True})
    parser.parse(reset=True)
    with pytest.raises(DicomwebError, match="set dicomweb_url"):  # storing needs a server
        parser.get_parsed_content("dicomweb_output")()


def test_chest_inference_reads_a_dicomweb_server_and_stores_its_results_there(trained_chest_bundle, chest_dir, own_orthanc, tmp_path):
    """With dicomweb_url the chest inference explains the studies the server holds, a bad one skipped and listed with
    skip_bad_samples; with dicomweb_store its DICOM results go back into their studies (queried back), without none."""
    url = own_orthanc()
    sources = sorted(p for p in (chest_dir / "dicom").iterdir() if p.suffix == ".dcm")[:2]
    bad, bad_files = write_study(tmp_path / "bad", 1)
    push(url, *sources, bad_copy(bad_files[0], tmp_path / "bad" / "nopixels.dcm", "nopixels"))
    studies = {pydicom.dcmread(p).StudyInstanceUID: pydicom.dcmread(p).SOPInstanceUID for p in sources}
    for store in (False, True):
        out = tmp_path / f"inference_{store}"
        run_workflow(chest_workflow(trained_chest_bundle, chest_dir, INFER, workflow_type="infer", inference_dir=str(out),
                                    dicomweb_url=url, dicomweb_store=store, skip_bad_samples=True, finding_thresholds=[0.0] + [1.0] * 9))
        rows = list(csv.DictReader(open(out / "predictions.csv")))
        assert sorted({r["image_id"] for r in rows}) == sorted(studies.values())
        skipped = list(csv.DictReader(open(out / "skipped.csv")))
        assert [(s["fold"], s["file"]) for s in skipped] == [("dicomweb", f"{url} study {bad}")] and "no Pixel Data" in skipped[0]["cause"]
        for study, source in studies.items():
            on_server = held(url, study)
            results = set(on_server) - {source}  # the Segmentation, Parametric Maps and report of the study
            written = {pydicom.dcmread(p).SOPInstanceUID for p in (out / "dicom").rglob("*.dcm") if pydicom.dcmread(p).StudyInstanceUID == study}
            assert source in on_server and written and results == (written if store else set())
