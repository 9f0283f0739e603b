"""Results as the DICOM objects a PACS and its viewers accept, built with highdicom in a new series of the source study:
a binary Segmentation of the clinical region, the SegX map as a Parametric Map, an optional overlay Secondary Capture,
and one Comprehensive SR (TID 1500 measurement report) per study with each explained finding's scores.

Every function takes the source image's dataset (its header is enough, pixels are not read) and arrays already at the
source's rows x columns, and returns the dataset; :func:`save_atomic` writes it.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import segx_monai
from segx_monai.handlers.contract import CERTAINTY_SCORE_NAMES, CERTAINTY_SCORES, Columns
from segx_monai.io.dicom import pixel_spacing
from segx_monai.io.dicom_writer import set_patient_study
from segx_monai.utils.staging import replace_atomic

__all__ = [
    "REGIONS",
    "SERIES",
    "ExplainedFinding",
    "Region",
    "Series",
    "image_plane",
    "measurement_report",
    "overlay_capture",
    "region_segmentation",
    "save_atomic",
    "segx_parametric_map",
    "source_header",
    "write_path",
]

MANUFACTURER = "segx-monai"
SCHEME = "99SEGX"  # a local coding scheme (PS3.16 8.2: "99" prefix): the findings and scores have no SNOMED/DCM codes
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")  # probabilities, thresholds, scores and SegX maps


@dataclass(frozen=True)
class Region:
    """The clinical region a segmenter delineates: its segment label and SNOMED category and type."""

    label: str
    category: Code
    property_type: Code
    anatomic_regions: tuple[Code, ...] = ()


REGIONS = {
    "lungs": Region("Lungs", codes.SCT.AnatomicalStructure, codes.SCT.Lung),
    "lesion": Region("Skin lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, (codes.SCT.Skin,)),
}


@dataclass(frozen=True)
class Series:
    """Number and description of one kind of result series (one series of each kind per study)."""

    number: int
    description: str


SERIES = {
    "seg": Series(901, "SegX region segmentation"),
    "pm": Series(902, "SegX map"),
    "sc": Series(903, "SegX overlay"),
    "sr": Series(904, "SegX report"),
}


@dataclass
class ExplainedFinding:
    """One explained (image, class) pair as the report holds it: the finding, its probability and decision threshold
    (None for a single-label prediction), certainty scores by ``CERTAINTY_SCORES`` name, the review flag and the
    objects it refers to (datasets, their pixels not needed)."""

    source: Dataset
    finding: str
    probability: float
    review: bool
    segmentation: Dataset
    parametric_map: Dataset | None = None
    threshold: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Mapping, finding: str, source: Dataset, segmentation: Dataset, parametric_map: Dataset | None) -> ExplainedFinding:
        """From a sample-table row (``Columns``) of one explained pair."""
        threshold = row.get(Columns.THRESHOLD)
        return cls(source, finding, float(row[Columns.PROBABILITY]), bool(row.get(Columns.REVIEW)), segmentation,
                   parametric_map, None if threshold is None else float(threshold),
                   {name: float(row[name]) for name in CERTAINTY_SCORES if row.get(name) is not None})


def save_atomic(ds: Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a DICOM Part 10 file beside ``path`` and rename it into place: a kill leaves no partial object."""
    replace_atomic(path, lambda partial: ds.save_as(partial, enforce_file_format=True))


def _equipment(series: Series) -> dict:
    """What every result object says of its series and maker (highdicom dates the content at creation)."""
    return {"manufacturer": MANUFACTURER, "series_description": series.description, "software_versions": segx_monai.__version__}


# the Enhanced General Equipment module of SEG and PM: type 1, though software has no device serial number
_ENHANCED_EQUIPMENT = {"manufacturer_model_name": MANUFACTURER, "device_serial_number": "0"}


# patient direction letters (PS3.3 C.7.6.1.1.1) as unit vectors of the patient coordinate system (LPS)
_DIRECTIONS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def source_header(source: Dataset) -> Dataset:
    """A copy of the source's header whose patient and study attributes of type 1 or 2 are all there, empty where
    the source lacks them (archives drop empty type 2 ones), since highdicom copies them from it."""
    header = copy.copy(source)
    set_patient_study(header, source)
    return header


def image_plane(source: Dataset) -> Dataset:
    """A copy of the source header with the plane geometry that the Segmentation and Parametric Map IODs need, which a
    projection radiograph or photograph lacks: its own frame of reference (derived from the source's SOP Instance UID,
    so that the objects of one image share it), the first pixel at the origin, rows and columns along the Patient
    Orientation (identity when it has none), the source's pixel spacing. A source with a plane geometry keeps it."""
    plane = source_header(source)
    if "FrameOfReferenceUID" in source and "ImagePositionPatient" in source and "ImageOrientationPatient" in source:
        return plane
    plane.FrameOfReferenceUID = _derived_uid(source, "frame of reference")
    plane.PositionReferenceIndicator = None
    plane.ImagePositionPatient = [0.0, 0.0, 0.0]
    letters = _orientation(source) or ("L", "P")  # an unknown orientation: the identity
    plane.ImageOrientationPatient = [*_DIRECTIONS[letters[0]], *_DIRECTIONS[letters[1]]]
    plane.PixelSpacing = pixel_spacing(source)
    plane.SliceThickness = 1.0  # a projection has no slice; highdicom's readers need a thickness
    return plane


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it is two one-letter directions, else None."""
    letters = tuple(str(v) for v in source.get("PatientOrientation") or ())
    return letters if len(letters) == 2 and all(v in _DIRECTIONS for v in letters) else None


def _derived_uid(source: Dataset, purpose: str) -> str:
    """A UID derived from the source image's SOP Instance UID and ``purpose``, the same on every run."""
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), purpose])


def region_segmentation(
    source: Dataset, mask: np.ndarray, region: Region, *, series_uid: str, instance_number: int = 1, algorithm: str = "segmenter",
) -> hd.seg.Segmentation:
    """A binary Segmentation of ``region`` (one segment) from a boolean ``mask`` at the source's rows x columns, frame 1
    derived from the source image pixel for pixel; the segmenter is named as ``<MANUFACTURER> <algorithm>``."""
    mask = np.asarray(mask)
    _check_shape(source, mask, "mask")
    identification = hd.AlgorithmIdentificationSequence(
        name=f"{MANUFACTURER} {algorithm}", family=codes.cid7162.ArtificialIntelligence, version=segx_monai.__version__)
    description = hd.seg.SegmentDescription(
        1, region.label, region.category, region.property_type, hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        identification, anatomic_regions=list(region.anatomic_regions) or None)
    series = SERIES["seg"]
    seg = hd.seg.Segmentation(
        [image_plane(source)], mask.astype(bool)[None], hd.seg.SegmentationTypeValues.BINARY, [description],
        series_uid, series.number, hd.UID(), instance_number, **_ENHANCED_EQUIPMENT, **_equipment(series),
        omit_empty_frames=False, content_label="REGION", content_description=f"{region.label}, automatic")
    return _with_orientation(seg, source)


def segx_parametric_map(
    source: Dataset, segx_map: np.ndarray, *, explainer: str, finding: str | None, series_uid: str, instance_number: int = 1,
) -> hd.pm.ParametricMap:
    """The SegX map (float32, at the source's rows x columns) as a Parametric Map whose real world value mapping is the
    identity, unitless, labelled with the explainer and the finding; displayed over the map's own range."""
    values = np.asarray(segx_map, dtype=np.float32)
    _check_shape(source, values, "SegX map")
    low, high = float(values.min()), float(values.max())
    what = f"SegX {explainer} map" + (f" of {finding}" if finding else "")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SegX", lut_explanation=what[:64], unit=UNITLESS, value_range=(low, high), slope=1.0, intercept=0.0)
    window = hd.VOILUTTransformation(window_center=(low + high) / 2, window_width=max(high - low, 1e-6), voi_lut_function="LINEAR_EXACT")
    series = SERIES["pm"]
    pm = hd.pm.ParametricMap(
        [image_plane(source)], values, series_uid, series.number, hd.UID(), instance_number, **_ENHANCED_EQUIPMENT,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping], voi_lut_transformations=[window],
        content_label="SEGX", content_description=what[:64], **_equipment(series))
    return _with_orientation(pm, source)


def overlay_capture(source: Dataset, rgb: np.ndarray, *, finding: str | None, series_uid: str, instance_number: int = 1) -> hd.sc.SCImage:
    """An RGB uint8 overlay at the source's rows x columns as a Secondary Capture for viewers that show nothing else,
    referencing the source image, with its pixel spacing and patient orientation."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB uint8 array (rows, columns, 3), got {rgb.dtype} {rgb.shape}")
    _check_shape(source, rgb, "overlay")
    series = SERIES["sc"]
    # highdicom needs one-letter directions; any other orientation (unknown: empty) is the source's, set below
    orientation = _orientation(source) or ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        source_header(source), np.ascontiguousarray(rgb), hd.PhotometricInterpretationValues.RGB, 8, hd.CoordinateSystemNames.PATIENT,
        series_uid, series.number, hd.UID(), instance_number,
        pixel_spacing=tuple(pixel_spacing(source)), patient_orientation=orientation, transfer_syntax_uid=ExplicitVRLittleEndian,
        **{**_equipment(series), "series_description": f"{series.description}{' ' + finding if finding else ''}"})
    # what highdicom's SCImage does not set: the image is derived, says from what, and references its source
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "SegX explanation overlaid on the source image"
    if source.get("SpecificCharacterSet"):
        sc.SpecificCharacterSet = source.SpecificCharacterSet
    for sequence in ("ReferencedImageSequence", "SourceImageSequence"):
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        setattr(sc, sequence, [reference])
    return _with_orientation(sc, source)


def measurement_report(findings: Sequence[ExplainedFinding], *, series_uid: str, sources: Sequence[Dataset] = (), instance_number: int = 1) -> hd.sr.ComprehensiveSR:
    """One Comprehensive SR (TID 1500) of a study: one planar ROI measurement group per explained finding with its
    probability, threshold and certainty scores (undefined ones left out), the review flag, the finding, and references
    to the region's segmentation frame, the SegX parametric map and the source image; an image of ``sources`` without
    an explained finding gets a group of finding "No finding" referring to it."""
    images = {str(ds.SOPInstanceUID): source_header(ds) for ds in [*sources, *(f.source for f in findings)]}
    if not images:
        raise ValueError("a measurement report needs at least one source image or explained finding")
    studies = {str(ds.StudyInstanceUID) for ds in images.values()}
    if len(studies) > 1:
        raise ValueError(f"a measurement report covers one study; got images of {sorted(studies)}")
    algorithm = hd.sr.AlgorithmIdentification(MANUFACTURER, segx_monai.__version__)
    explained = {str(f.source.SOPInstanceUID) for f in findings}
    groups = [_finding_group(f, algorithm) for f in findings] + [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            hd.sr.TrackingIdentifier(identifier=f"No finding in {uid}"[:64]), finding_type=_concept("no_finding", "No finding"),
            algorithm_id=algorithm, source_images=[hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, uid)])
        for uid, ds in images.items() if uid not in explained]
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=[MANUFACTURER, segx_monai.__version__]),
                                                       name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=MANUFACTURER)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device))
    library = [_library_entry(ds) for ds in images.values()]
    report = hd.sr.MeasurementReport(context, codes.SCT.ImagingProcedure, groups,
                                     referenced_images=[ds for ds in library if ds is not None] or None)
    evidence = {str(ds.SOPInstanceUID): ds for ds in [*images.values(), *(f.segmentation for f in findings),
                                                       *(f.parametric_map for f in findings if f.parametric_map is not None)]}
    series = SERIES["sr"]
    sr = hd.sr.ComprehensiveSR(list(evidence.values()), report, series_uid, series.number, hd.UID(), instance_number,
                               **_equipment(series))
    scheme = Dataset()  # declares the local coding scheme of the findings and scores
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName, scheme.CodingSchemeResponsibleOrganization = (
        SCHEME, f"{MANUFACTURER} findings and scores", MANUFACTURER)
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _library_entry(source: Dataset) -> Dataset | None:
    """The source as highdicom's image library describes it: a projection radiograph (CR, DX, ...) by its Patient
    Orientation and Imager Pixel Spacing, taken from Pixel Spacing when it has only that; None (left out of the
    library, still in the evidence) for a projection radiograph without a two-letter Patient Orientation."""
    entry = copy.copy(source)
    if source.get("Modality") in _PROJECTION:
        if len(source.get("PatientOrientation") or ()) != 2:
            return None
        entry.ImagerPixelSpacing = pixel_spacing(source)
    return entry


_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")  # the modalities highdicom describes as projection radiography


def _concept(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value, SCHEME, meaning)


def _finding_group(finding: ExplainedFinding, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The measurement group of one explained finding."""
    review = hd.sr.QualitativeEvaluation(_concept(Columns.REVIEW, "Review recommended"), codes.SCT.Yes if finding.review else codes.SCT.No)
    # built from the UIDs: highdicom's from_segmentation looks for the segment number per frame, where a one-segment
    # Segmentation has it in the shared functional groups; and a frame reference names no segment (PS3.3 Table 10-3)
    seg, source = finding.segmentation, finding.source
    reference = hd.sr.ReferencedSegmentationFrame(
        seg.SOPClassUID, seg.SOPInstanceUID, 1, 1, hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID))
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    images = [hd.sr.SourceImageForMeasurement(source.SOPClassUID, source.SOPInstanceUID)]
    pm = finding.parametric_map
    maps = images + ([] if pm is None else [hd.sr.SourceImageForMeasurement(pm.SOPClassUID, pm.SOPInstanceUID)])
    values = {Columns.PROBABILITY: ("Probability", finding.probability), Columns.THRESHOLD: ("Decision threshold", finding.threshold)}
    values.update({name: (CERTAINTY_SCORE_NAMES[name], finding.scores.get(name)) for name in CERTAINTY_SCORES})
    # the probability and threshold refer to the source image, the certainty scores to it and to the SegX map
    measurements = [hd.sr.Measurement(_concept(key, meaning), value, UNITLESS, algorithm_id=algorithm,
                                      referenced_images=images if key in (Columns.PROBABILITY, Columns.THRESHOLD) else maps)
                    for key, (meaning, value) in values.items() if value is not None and math.isfinite(value)]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        hd.sr.TrackingIdentifier(identifier=f"{finding.finding} in {source.SOPInstanceUID}"[:64]),
        referenced_segment=reference,
        finding_type=_concept(finding.finding[:16], finding.finding), algorithm_id=algorithm,
        measurements=measurements, qualitative_evaluations=[review])


def _check_shape(source: Dataset, array: np.ndarray, what: str) -> None:
    """Refuse an array that is not at the source's rows x columns, naming the source image."""
    if tuple(array.shape[:2]) != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"{what} of shape {array.shape[:2]} for source image {source.SOPInstanceUID} "
                         f"({getattr(source, 'filename', '')}); expected its rows x columns {(int(source.Rows), int(source.Columns))}")


def _with_orientation(ds, source: Dataset):
    """``ds`` with the source's Patient Orientation (type 2C where an image has no Image Orientation (Patient) of its
    own, as a projection radiograph) and Laterality (type 2C of the General Series module: empty when unknown)."""
    ds.PatientOrientation = source.get("PatientOrientation") or None
    if not isinstance(ds, hd.seg.Segmentation):  # the Segmentation IOD has no such condition
        ds.Laterality = source.get("Laterality") or None
    return ds


def write_path(output_dir: str | Path, source: Dataset, name: str) -> Path:
    """``<output_dir>/<StudyInstanceUID>/<name>``, the folder created."""
    folder = Path(output_dir) / str(source.StudyInstanceUID)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
