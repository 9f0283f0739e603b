"""Write each DICOM input's results as DICOM objects at the source's geometry (see ``segx_monai.io.dicom_results``)."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from ignite.engine import Engine, Events

from segx_monai.core.maps import resize_maps
from segx_monai.data.readers import dicom_as_rgb
from segx_monai.handlers.contract import Columns, OutputKeys, pair_stem
from segx_monai.handlers.savers import heat_overlay, scaled_to_max
from segx_monai.handlers.writers import IterationHandler, item_rows, mask_at_size
from segx_monai.io import dicom_results
from segx_monai.io.dicom import is_dicom, read_dicom

logger = logging.getLogger(__name__)


class DicomResultsError(RuntimeError):
    """The DICOM results of an input or a study could not be made; the message names the file or the study."""


class DicomResultsWriter(IterationHandler):
    """For each DICOM input, writes under ``<output_dir>/<StudyInstanceUID>/`` the Segmentation of the clinical region
    (``<id>_seg.dcm``), a Parametric Map of each explained pair's SegX map (``<id>[_<finding>]_segx_pm.dcm``) and, with
    ``overlays``, its overlay as a Secondary Capture (``<id>[_<finding>]_segx_sc.dcm``), all at the source's rows x
    columns; at the end of the run one Structured Report per study (``report_sr.dcm``). Other inputs get nothing.

    ``region`` is a key of ``dicom_results.REGIONS``; ``threshold`` the segmenter probability of the region's pixels;
    ``explainer`` names the map. Each file is written beside its name and renamed into place.
    """

    requires = (OutputKeys.REGION_PROB, OutputKeys.SEGX_MAP)

    def __init__(
        self, output_dir: str | Path, region: str, explainer: str, threshold: float = 0.5, overlays: bool = False,
        path_key: str = "image_path", id_key: str = Columns.IMAGE_ID, size_key: str = "original_size",
    ) -> None:
        if region not in dicom_results.REGIONS:
            raise ValueError(f"unknown region {region!r}; expected one of {sorted(dicom_results.REGIONS)}")
        self.output_dir, self.region, self.explainer, self.threshold = Path(output_dir), dicom_results.REGIONS[region], explainer, threshold
        self.overlays, self.path_key, self.id_key, self.size_key = overlays, path_key, id_key, size_key
        self.start()

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.COMPLETED, self.write_reports)

    def start(self, engine: Engine | None = None) -> None:
        """Forget the previous run's series and findings: each run writes new series."""
        self._series: dict[tuple[str, str], str] = {}  # (study, kind) -> the run's series of that kind in that study
        self._instances: dict[tuple[str, str], int] = defaultdict(int)
        self._findings: dict[str, list[dicom_results.ExplainedFinding]] = defaultdict(list)
        self._sources: dict[str, list[pydicom.Dataset]] = defaultdict(list)

    def _placement(self, source: pydicom.Dataset, kind: str) -> dict:
        """The series UID and next instance number of ``kind`` objects in the source's study."""
        key = (str(source.StudyInstanceUID), kind)
        if key not in self._series:
            self._series[key] = hd.UID()
        self._instances[key] += 1
        return {"series_uid": self._series[key], "instance_number": self._instances[key]}

    def _save(self, ds: pydicom.Dataset, source: pydicom.Dataset, name: str) -> None:
        dicom_results.save_atomic(ds, dicom_results.write_path(self.output_dir, source, name))

    def __call__(self, engine: Engine) -> None:
        for batch_item, item in self.items(engine):
            path = batch_item.get(self.path_key)
            if path is None or not is_dicom(path):
                continue
            source = pydicom.dcmread(path, stop_before_pixels=True)
            try:
                self._write(path, source, batch_item, item)
            except Exception as err:  # named and raised again: highdicom's messages do not say which image
                raise DicomResultsError(f"{path} (study {source.get('StudyInstanceUID')}, series "
                                        f"{source.get('SeriesInstanceUID')}): its DICOM results could not be made: {err}") from err

    def _write(self, path: str, source: pydicom.Dataset, batch_item: dict, item: dict) -> None:
        """The Segmentation, the Parametric Maps and Secondary Captures of one DICOM input; its findings kept for the report."""
        size = batch_item.get(self.size_key)
        image_id = batch_item[self.id_key]
        mask = mask_at_size(item[OutputKeys.REGION_PROB], size, self.threshold)
        seg = dicom_results.region_segmentation(source, mask, self.region, **self._placement(source, "seg"))
        self._save(seg, source, f"{image_id}_seg.dcm")
        study = str(source.StudyInstanceUID)
        self._sources[study].append(source)
        picture = None
        segx_maps = resize_maps(item[OutputKeys.SEGX_MAP].detach().float().cpu(), size)[:, 0].numpy()  # every pair at once
        for row, segx_map in zip(item_rows(item), segx_maps):
            finding = row.get(Columns.FINDING) or row.get(Columns.PREDICTION)
            pm = dicom_results.segx_parametric_map(source, segx_map, explainer=self.explainer, finding=finding,
                                                   **self._placement(source, "pm"))
            stem = pair_stem(image_id, row.get(Columns.FINDING))
            self._save(pm, source, f"{stem}_segx_pm.dcm")
            if self.overlays:
                picture = dicom_as_rgb(read_dicom(path)[0]) if picture is None else picture
                overlay = heat_overlay(picture, scaled_to_max(np.clip(segx_map, 0, None)))
                sc = dicom_results.overlay_capture(source, overlay, finding=finding, **self._placement(source, "sc"))
                self._save(sc, source, f"{stem}_segx_sc.dcm")
            if finding:
                self._findings[study].append(dicom_results.ExplainedFinding.from_row(row, finding, source, _header(seg), _header(pm)))

    def write_reports(self, engine: Engine | None = None) -> None:
        """One Structured Report per study of the run: its explained findings, or only its images when none."""
        for study, sources in self._sources.items():
            try:
                sr = dicom_results.measurement_report(self._findings[study], sources=sources, **self._placement(sources[0], "sr"))
            except Exception as err:  # named and raised again, as in __call__
                raise DicomResultsError(f"study {study} ({len(sources)} images): its report could not be made: {err}") from err
            self._save(sr, sources[0], "report_sr.dcm")
            logger.info("Wrote the DICOM results of study %s under %s", study, self.output_dir / study)


def _header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds`` without its pixels: what the report refers to, kept until the run ends."""
    header = pydicom.Dataset()
    header.update({element.tag: element for element in ds if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")})
    return header
