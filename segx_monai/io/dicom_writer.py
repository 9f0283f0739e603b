"""Write pictures as DICOM: grayscale radiographs in the encodings clinical archives hold (the results written back
to a study are in ``segx_monai.io.dicom_results``).

:func:`write_dicom_variant` is the inverse of :func:`segx_monai.io.dicom.read_dicom`: the stored values are
chosen so that reading the file back gives the picture (exactly up to the stored bit depth for lossless
transfer syntaxes).
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import DSfloat

__all__ = ["TRANSFER_SYNTAXES", "set_patient_study", "write_dicom_variant"]

TRANSFER_SYNTAXES = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "jpeg_baseline": JPEGBaseline8Bit,
    "jpeg_lossless": JPEGLosslessSV1,
    "jpeg_ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}
SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
# Patient and study attributes of type 1 or 2 in both IODs: written even when empty
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def write_dicom_variant(
    array: np.ndarray,
    path: str | os.PathLike,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 8,
    signed: bool = False,
    transfer_syntax: str = "explicit_le",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    modality: str = "DX",
    patient_id: str = "ANONYMOUS",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    view_position: str = "PA",
    pixel_spacing: tuple[float, float] | None = None,
) -> Dataset:
    """Write a grayscale picture (uint8, or float in [0, 1]) as a single-frame CR/DX DICOM file; return the dataset.

    Args:
        photometric: "MONOCHROME2", or "MONOCHROME1" (stored inverted, so it reads back the same).
        bits: bits stored, 8 to 16 (12 and 16 are stored in 16-bit words); JPEG baseline takes 8 only.
        signed: store two's complement values (Pixel Representation 1).
        transfer_syntax: a key of ``TRANSFER_SYNTAXES`` or its UID.
        window: (center, width) of a LINEAR VOI window, in modality units, that maps onto the picture.
        voi_lut: non-decreasing 16-bit VOI LUT entries indexed by modality value from 0; the picture is
            stored as the modality values whose entries give it. It wins over `window`, as on reading.
        rescale: (slope, intercept) of the modality transform.
        modality: "CR" or "DX", which also picks the SOP class.
        patient_id, study_uid, series_uid, sop_uid: identifiers; missing UIDs are generated.
        view_position: e.g. "PA" or "AP".
        pixel_spacing: (row, column) Imager Pixel Spacing in mm.
    """
    syntax = TRANSFER_SYNTAXES.get(transfer_syntax) or UID(transfer_syntax)
    if syntax not in TRANSFER_SYNTAXES.values():
        raise ValueError(f"unsupported transfer syntax {transfer_syntax!r}; expected one of {list(TRANSFER_SYNTAXES)}")
    if syntax == JPEGBaseline8Bit and (bits != 8 or signed):
        raise ValueError("JPEG baseline holds 8-bit unsigned pixels only")
    if modality not in SOP_CLASSES:
        raise ValueError(f"unsupported modality {modality!r}; expected one of {list(SOP_CLASSES)}")
    # the values as written (DS keeps 16 characters) are the ones the stored pixels must invert
    window = None if window is None else tuple(DSfloat(v, auto_format=True) for v in window)
    rescale = None if rescale is None else tuple(DSfloat(v, auto_format=True) for v in rescale)
    picture = _unit_picture(array)
    if photometric == "MONOCHROME1":
        picture = 1.0 - picture
    stored = _stored_values(picture, bits, signed, window, voi_lut, rescale or (1.0, 0.0))

    ds = Dataset()
    set_patient_study(ds, {"PatientID": patient_id, "StudyInstanceUID": study_uid or generate_uid()})
    ds.SOPClassUID = SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ViewPosition = view_position
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    if pixel_spacing is not None:
        ds.ImagerPixelSpacing = [DSfloat(v, auto_format=True) for v in pixel_spacing]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.add_new("LUTDescriptor", "US", [len(voi_lut) % 65536, 0, 16])
        item.add_new("LUTData", "OW", np.asarray(voi_lut, dtype="<u2").tobytes())
        ds.VOILUTSequence = [item]
    ds.set_pixel_data(stored, photometric, bits, generate_instance_uid=False)
    _encode(ds, stored, syntax)
    ds.save_as(path, enforce_file_format=True)
    return ds


def set_patient_study(ds: Dataset, source: dict | Dataset) -> None:
    """Copy the patient and study attributes, empty where `source` lacks them, so the object files under that study."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(ds, keyword, source.get(keyword) or None)


def _unit_picture(array: np.ndarray) -> np.ndarray:
    """A 2D uint8 or [0, 1] float picture as float64 in [0, 1]."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D grayscale picture, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array / 255.0
    if array.dtype.kind != "f" or array.min() < 0 or array.max() > 1:
        raise ValueError(f"expected uint8, or float in [0, 1], got {array.dtype} in [{array.min()}, {array.max()}]")
    return array.astype(np.float64)


def _stored_values(
    picture: np.ndarray,
    bits: int,
    signed: bool,
    window: tuple[float, float] | None,
    voi_lut: np.ndarray | None,
    rescale: tuple[float, float],
) -> np.ndarray:
    """Stored pixel values that read_dicom maps back onto `picture`: its intensity steps run backwards."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = rescale
    if voi_lut is not None:
        # first modality value whose (non-decreasing) LUT entry reaches the wanted output
        modality = np.searchsorted(np.asarray(voi_lut), np.rint(picture * 65535))
    elif window is not None:
        center, width = window
        # inverse of the LINEAR window of PS3.3 C.11.2.1.2.1
        modality = center - 0.5 - (width - 1) / 2 + picture * (width - 1)
    else:
        modality_low, modality_high = sorted((low * slope + intercept, high * slope + intercept))
        modality = modality_low + picture * (modality_high - modality_low)
    stored = np.rint((modality - intercept) / slope)
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"window/VOI LUT/rescale need stored values in [{stored.min():g}, {stored.max():g}], "
            f"outside the {bits}-bit range [{low}, {high}]"
        )
    return stored.astype(f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}")


def _encode(ds: Dataset, stored: np.ndarray, syntax: UID) -> None:
    """Encode the pixel data of `ds` (native, as set by ``set_pixel_data``) in `syntax`."""
    if syntax == JPEGBaseline8Bit:
        frame = _jpeg_baseline(stored)  # pydicom has no JPEG baseline encoder; Pillow's libjpeg has
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    elif syntax == JPEGLosslessSV1:
        frame = _jpeg_lossless(stored, int(ds.BitsStored))
    elif syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)  # RLE, JPEG-LS (pyjpegls), JPEG 2000 (openjpeg)
        return
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        return
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


def _jpeg_baseline(frame: np.ndarray) -> bytes:
    """An 8-bit grayscale frame as a baseline JPEG (quality 95)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Huffman codes for symbols sorted by code length (ITU-T T.81 Annex C)."""
    codes, code, previous = [], 0, lengths[0]
    for length in lengths:
        code <<= int(length - previous)
        codes.append(code)
        code += 1
        previous = length
    return np.array(codes, dtype=np.int64)


# Fixed Huffman table over the difference categories 0..16: 3-bit codes for the six commonest, one bit
# more for every two rarer ones; the all-ones code stays unused as T.81 requires.
HUFFMAN_COUNTS = (0, 0, 6, 2, 2, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0)  # number of codes of length 1..16
HUFFMAN_LENGTHS = np.repeat(np.arange(1, 17), HUFFMAN_COUNTS)
HUFFMAN_CODES = _canonical_codes(HUFFMAN_LENGTHS)


def _jpeg_lossless(frame: np.ndarray, precision: int) -> bytes:
    """A grayscale frame as JPEG Lossless, process 14, selection value 1 (ITU-T T.81 Annex H).

    Written here because no encoder for it comes with pydicom, Pillow or the pylibjpeg plugins.
    """
    x = frame.astype(np.int64) & ((1 << precision) - 1)  # signed values as their two's complement bits
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]  # first row: the left neighbour
    prediction[1:, 0] = x[:-1, 0]  # first column: the neighbour above
    prediction[1:, 1:] = x[1:, :-1]  # elsewhere: the left neighbour (selection value 1)
    difference = (x - prediction).ravel() % 65536
    difference[difference >= 32768] -= 65536  # differences are taken modulo 2**16 (H.1.2.1)
    category = np.frexp(np.abs(difference))[1]  # bit length; 16 only for -32768, sent with no extra bits
    extra_bits = np.where(category == 16, 0, category)
    extra = np.where(difference < 0, difference - 1, difference) & ((1 << extra_bits) - 1)
    words = (HUFFMAN_CODES[category] << extra_bits) | extra
    lengths = HUFFMAN_LENGTHS[category] + extra_bits
    bits = np.unpackbits(words.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
    stream = bits[np.arange(32) >= 32 - lengths[:, None]]  # the last `length` bits of each word, in order
    stream = np.concatenate([stream, np.ones(-stream.size % 8, np.uint8)])  # pad with 1-bits (F.1.2.3)
    scan = np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")  # byte stuffing
    rows, columns = frame.shape
    return b"".join(
        [
            b"\xff\xd8",  # SOI
            _segment(b"\xff\xc3", struct.pack(">BHHBBBB", precision, rows, columns, 1, 1, 0x11, 0)),  # SOF3
            _segment(b"\xff\xc4", bytes([0, *HUFFMAN_COUNTS, *range(17)])),  # DHT, table 0
            _segment(b"\xff\xda", bytes([1, 1, 0, 1, 0, 0])),  # SOS: predictor 1, no point transform
            scan,
            b"\xff\xd9",  # EOI
        ]
    )


def _segment(marker: bytes, payload: bytes) -> bytes:
    """A JPEG marker segment: marker, big-endian length including itself, payload."""
    return marker + struct.pack(">H", len(payload) + 2) + payload
