"""Read 2D DICOM images (chest X-ray CR/DX, dermoscopy RGB) as [0, 1] arrays in (rows, columns) order.

Intensity convention for grayscale images, so that a DICOM and a PNG of the same picture give the
same array once the PNG is divided by its maximum value (255 for 8-bit):

1. modality transform: Modality LUT or Rescale Slope/Intercept (pydicom ``apply_modality_lut``);
2. VOI transform, first item only: a VOI LUT Sequence wins over Window Center/Width when both are
   present (pydicom's ``prefer_lut=True`` default); the result is mapped to [0, 1] over the output
   range of that transform: [0, 2**n - 1] for an n-bit VOI LUT, and for a window the modality output
   range of the stored bit range, which is what pydicom's ``apply_windowing`` maps onto;
3. without a VOI transform: the modality output range of the stored bit range
   ([0, 2**BitsStored - 1], or [-2**(BitsStored-1), 2**(BitsStored-1) - 1] if signed), not the data
   min-max, so that a dark image stays dark;
4. MONOCHROME1 is inverted (1 - x) so that bone is bright, as in MONOCHROME2.

Colour images (RGB, YBR_* converted to RGB by pydicom) are divided by 2**BitsStored - 1 and returned
as (rows, columns, 3).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.image_reader import _copy_compatible_dict, _stack_images  # what MONAI's own readers use
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom as has_dicm_prefix
try:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
except ImportError:  # pydicom 2.4, which MONAI Label needs: no decoder registry, ``pixel_array`` names what is missing
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi, apply_windowing

    get_decoder = None

__all__ = ["DicomReadError", "DicomReader", "dicom_datalist", "is_dicom", "read_dicom"]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
TEXT_KEYWORDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "ViewPosition",
    "PhotometricInterpretation",
)
SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing")


class DicomReadError(ValueError):
    """A file could not be read as a 2D single-frame DICOM image; the message names the file and why."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.dicom`` name, or any file starting with the 128-byte preamble and ``DICM``."""
    path = Path(path)
    return path.suffix.lower() in DICOM_SUFFIXES or (path.is_file() and has_dicm_prefix(path))


def pixel_spacing(header: Dataset | dict) -> list[float]:
    """The (row, column) pixel spacing in mm of a DICOM header (a dataset, or :func:`read_dicom`'s metadata): Pixel
    Spacing, else Imager Pixel Spacing (CR/DX), else 1 mm (a photograph without calibration)."""
    spacing = next((header.get(key) for key in SPACING_KEYWORDS if header.get(key)), (1.0, 1.0))
    return [float(v) for v in spacing]


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a 2D DICOM image as float32 in [0, 1], (rows, columns) or (rows, columns, 3), and its metadata.

    The metadata has the keywords in ``TEXT_KEYWORDS`` (str), ``PixelSpacing`` and
    ``ImagerPixelSpacing`` (row, column spacing in mm), ``BitsStored``, ``TransferSyntaxUID`` and
    ``filename``; absent attributes are None.
    """
    return _decode(_open(path))


def dicom_datalist(folder: str | os.PathLike) -> list[dict]:
    """List the DICOM images under `folder`, recursively, as MONAI data dicts sorted by patient, study, series, SOP UID.

    Files that are not DICOM, and DICOM files without an image (DICOMDIR, reports, presentation
    states), are skipped and counted in a log message; a DICOM file that cannot be parsed raises.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    items, skipped = [], 0
    for path in (p for p in folder.rglob("*") if p.is_file()):
        ds = _open(path, stop_before_pixels=True) if is_dicom(path) else None
        if ds is None or "Rows" not in ds:
            skipped += 1
            continue
        items.append(
            {
                "image": str(path),
                "patient_id": str(ds.get("PatientID", "")),
                "study_uid": str(ds.get("StudyInstanceUID", "")),
                "series_uid": str(ds.get("SeriesInstanceUID", "")),
                "sop_uid": str(ds.get("SOPInstanceUID", "")),
            }
        )
    if not items:
        raise DicomReadError(f"{folder}: no DICOM images found in the folder or below ({skipped} other files)")
    logger.info("%s: %d DICOM images, %d other files skipped", folder, len(items), skipped)
    return sorted(items, key=lambda d: (d["patient_id"], d["study_uid"], d["series_uid"], d["sop_uid"], d["image"]))


class DicomReader(ImageReader):
    """MONAI reader for 2D DICOM images, e.g. ``LoadImage(reader=DicomReader())``.

    Unlike MONAI's ``PydicomReader``, which swaps the first two axes, the array is in the
    (rows, columns) order of ``pixel_array`` and of ``PILReader(reverse_indexing=False)``;
    intensities follow :func:`read_dicom`. Several files are stacked as channels, as MONAI's readers do.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True if every file name passes :func:`is_dicom`."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else filename
        return all(is_dicom(name) for name in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike) -> Dataset | list[Dataset]:
        """Parse one file, or several, into pydicom datasets (a single dataset for one file)."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        datasets = [_open(name) for name in names]
        return datasets if len(datasets) > 1 else datasets[0]

    def get_data(self, img: Dataset | Sequence[Dataset]) -> tuple[np.ndarray, dict]:
        """Decode the dataset(s) into the image array and a MONAI meta dict with the DICOM metadata as strings."""
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for ds in img if isinstance(img, (list, tuple)) else [img]:
            array, dicom_meta = _decode(ds)
            header = {key: _as_text(value) for key, value in dicom_meta.items()}
            affine = np.diag([*pixel_spacing(dicom_meta), 1.0, 1.0])
            header.update(
                spatial_shape=np.asarray(array.shape[:2]),
                original_channel_dim="no_channel" if array.ndim == 2 else -1,
                affine=affine,
                original_affine=affine.copy(),
                filename_or_obj=dicom_meta["filename"],
            )
            arrays.append(array)
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta


def _open(path: str | os.PathLike, stop_before_pixels: bool = False) -> Dataset:
    """Parse a DICOM Part 10 file, turning pydicom's parse errors into a DicomReadError naming the file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except OSError:
        raise
    except Exception as err:  # pydicom reports malformed files with many exception types
        raise DicomReadError(
            f"{path}: not a readable DICOM file ({err}); expected a DICOM Part 10 file "
            "(128-byte preamble, 'DICM', file meta information)"
        ) from err


def _decode(ds: Dataset) -> tuple[np.ndarray, dict]:
    """Check that `ds` is a decodable 2D single-frame image, then decode and scale it to [0, 1]."""
    path = ds.filename
    if "PixelData" not in ds:
        raise DicomReadError(
            f"{path}: no Pixel Data (7FE0,0010); expected an image, got SOP class "
            f"{ds.get('SOPClassUID', 'unknown')}, or the file is truncated or corrupt"
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomReadError(f"{path}: {frames} frames; expected a 2D single-frame image")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in GRAYSCALE + COLOUR:
        raise DicomReadError(
            f"{path}: unsupported Photometric Interpretation {photometric!r}; expected one of {GRAYSCALE + COLOUR}"
        )
    _check_decoder(ds)
    with _DecoderMessages() as messages:
        try:
            pixels = ds.pixel_array
        except Exception as err:  # decoders raise their own exception types on corrupt data
            raise DicomReadError(f"{path}: could not decode the pixel data ({err})") from err
    if messages:
        # e.g. a corrupt JPEG stream: one decoder fails, pydicom logs it and another returns a partly black image
        raise DicomReadError(
            f"{path}: the pixel data decoded with warnings, so the image may be corrupt: {'; '.join(messages)}"
        )
    if photometric in GRAYSCALE:
        image = _grayscale(pixels, ds)
    else:
        image = pixels / (2 ** int(ds.BitsStored) - 1)
    return image.astype(np.float32), _metadata(ds)


class _DecoderMessages(logging.Handler):
    """Collects, as a list, the decoder failures pydicom logs in this thread while it decodes; a logging handler,
    because the ``warnings`` module's filters are process-wide and the bundles decode in several threads at once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.messages = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # a decoder that failed (logged as an error) or was replaced by another one; pydicom's other warnings
        # (excess padding, NumberOfFrames 0, views) describe harmless non-conformances and stay warnings
        if record.thread == self.thread and (record.levelno >= logging.ERROR or "decoding plugin" in message):
            self.messages.append(message)

    def __enter__(self) -> list[str]:
        logging.getLogger("pydicom").addHandler(self)
        return self.messages

    def __exit__(self, *_) -> None:
        logging.getLogger("pydicom").removeHandler(self)


def _check_decoder(ds: Dataset) -> None:
    """Raise a DicomReadError naming the transfer syntax and the packages to install when no decoder can read it."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicomReadError(f"{ds.filename}: no Transfer Syntax UID (0002,0010) in the file meta information")
    if get_decoder is None:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomReadError(
            f"{ds.filename}: pydicom has no pixel data decoder for transfer syntax {syntax} ({syntax.name}); "
            "expected an uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE image"
        ) from err
    if not decoder.is_available:
        raise DicomReadError(
            f"{ds.filename}: no decoder installed for transfer syntax {syntax} ({syntax.name}); "
            f"install one of: {'; '.join(decoder.missing_dependencies)}"
        )


def _grayscale(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality transform, VOI transform and MONOCHROME1 inversion, mapped to [0, 1] (see module docstring)."""
    values = apply_modality_lut(pixels, ds)
    low, high = _modality_range(ds)
    # apply_voi / apply_windowing rather than apply_voi_lut, to know which output range applies
    if ds.get("VOILUTSequence"):
        values = apply_voi(np.rint(values).astype(np.int64), ds)  # LUT indices are integer modality values
        low, high = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    elif None not in (ds.get("WindowCenter"), ds.get("WindowWidth")):
        values = apply_windowing(values, ds)
    else:
        low, high = sorted((low, high))
    image = np.clip((values - low) / (high - low), 0.0, 1.0)
    # pydicom leaves MONOCHROME1 inversion to the display step
    return 1.0 - image if ds.PhotometricInterpretation == "MONOCHROME1" else image


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """Modality output of the stored bit range, as pydicom's ``apply_windowing`` computes it (not exposed there)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    bits = int(ds.BitsStored)
    stored = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    low, high = apply_modality_lut(np.array(stored), ds)
    return float(low), float(high)


def _metadata(ds: Dataset) -> dict:
    """The DICOM attributes carried along with the image; None where absent."""
    meta: dict = {key: None if ds.get(key) is None else str(ds.get(key)) for key in TEXT_KEYWORDS}
    for key in SPACING_KEYWORDS:
        meta[key] = tuple(float(v) for v in ds.get(key)) if ds.get(key) else None
    meta["BitsStored"] = int(ds.BitsStored)
    meta["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
    meta["filename"] = str(ds.filename)
    return meta


def _as_text(value) -> str:
    """A metadata value as a string MONAI can collate: '' for absent, DICOM's backslash form for several values."""
    if value is None:
        return ""
    return "\\".join(map(str, value)) if isinstance(value, tuple) else str(value)
