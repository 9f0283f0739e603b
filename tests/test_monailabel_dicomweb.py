"""MONAI Label's DICOMweb mode against a real Orthanc: scripts/monailabel.sh serving a DICOMweb URL (the README's OHIF
set-up) lists the radiographs' series the server holds, not the results stored beside them, and labels each as the
chest bundle's own inference does; a series without an image is a clear HTTP error."""

from __future__ import annotations

import csv
import io
import json
import sys

import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from PIL import Image

from conftest import CHEST_TINY, INFER, REPO, chest_workflow, run_workflow
from orthanc import own_orthanc  # noqa: F401  (fixture)
from test_monailabel_server import START_TIMEOUT, dice, monailabel_python  # noqa: F401  (fixture)

sys.path.insert(0, str(REPO / "monailabel_app"))
from local_server import ServerError, local_server  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_the_app_serves_the_radiographs_of_a_dicomweb_server(monailabel_python, trained_chest_bundle, chest_dir, own_orthanc, tmp_path, monkeypatch):
    url = own_orthanc()
    sources = sorted(p for p in (chest_dir / "dicom").iterdir() if p.suffix == ".dcm")[:2]
    datasets = [pydicom.dcmread(p) for p in sources]
    empty = pydicom.dcmread(sources[0])  # a series of the first study whose instance has no image
    empty.SeriesInstanceUID, empty.SOPInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    del empty.PixelData
    result = pydicom.dcmread(sources[1])  # a result stored beside a source: not a series to label
    result.SeriesInstanceUID, result.SOPInstanceUID, result.Modality = pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), "OT"
    client = DICOMwebClient(url)
    for ds in [*datasets, empty, result]:
        client.store_instances([ds], study_instance_uid=ds.StudyInstanceUID)

    own = tmp_path / "bundle_inference"  # the bundle's own inference on the same files
    run_workflow(chest_workflow(trained_chest_bundle, chest_dir, INFER, workflow_type="infer", input=[str(p) for p in sources],
                                inference_dir=str(own)))
    rows = list(csv.DictReader(open(own / "predictions.csv")))

    monkeypatch.setenv("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(tmp_path / "cache"))
    overrides = {"bundle_root": str(trained_chest_bundle), "dataset_dir": str(chest_dir), "image_size": CHEST_TINY["image_size"]}
    options = ["--conf", "bundles", "chestx_segx", "--conf", "chestx_segx_overrides", json.dumps(overrides)]
    try:
        with local_server(url, options, tmp_path / "server.log", START_TIMEOUT) as server:
            status, info = server.json("/info/")
            assert status == 200 and info["datastore"]["total"] == len(datasets) + 1  # the sources and the empty series
            for source, ds in zip(sources, datasets):
                status, answer, label = server.infer("chestx_segx_segmenter", ds.SeriesInstanceUID)
                assert status == 200, answer
                lungs = np.asarray(Image.open(io.BytesIO(label))) > 0
                mask = np.asarray(Image.open(own / "masks" / f"{source.stem}_lungs.png")) > 0
                assert lungs.shape == (ds.Rows, ds.Columns) and dice(lungs, mask) > 0.95
                status, answer, _ = server.infer("chestx_segx_segx", ds.SeriesInstanceUID)
                assert status == 200, answer
                row = next(r for r in rows if r["image_id"] == source.stem)
                assert all(p == pytest.approx(float(row[f"p_{name}"]), abs=1e-4) for name, p in answer["probabilities"].items())
            status, detail, label = server.infer("chestx_segx_segx", empty.SeriesInstanceUID)
            assert status == 422 and label is None and "no Pixel Data" in detail, detail
    except ServerError as err:
        pytest.fail(str(err))
