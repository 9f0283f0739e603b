"""DICOM reading and writing: every written variant reads back as the PNG of the same picture, in (rows, columns)."""

import io
import logging
import re

import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigParser
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage, LoadImaged
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MPEG2MPML,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from segx_monai.data.readers import xray_readers
from segx_monai.io import (
    DicomReader,
    DicomReadError,
    dicom_datalist,
    is_dicom,
    read_dicom,
    write_dicom_variant,
)
from segx_monai.io.dicom_results import overlay_capture, save_atomic
from segx_monai.io.dicom_writer import TRANSFER_SYNTAXES


def _picture() -> np.ndarray:
    """64x80 grayscale: horizontal gradient, vertical steps, a white block top-left, a black one bottom-right."""
    rows, columns = 64, 80
    picture = np.linspace(20, 200, columns)[None, :] + (np.arange(rows) // 8 * 6)[:, None]
    picture[:16, :24] = 255
    picture[-8:, -12:] = 0
    return np.rint(picture).astype(np.uint8)


PICTURE = _picture()
RGB = np.stack([PICTURE, PICTURE[::-1], np.full_like(PICTURE, 90)], axis=-1)
# non-linear 12-bit -> 16-bit VOI LUT that reaches every 8-bit grey level (257 * level)
SQUARE_LUT = (257 * np.floor(255 * (np.arange(4096) / 4095) ** 2)).astype(np.uint16)
EXACT = 1e-6
HALF_STEP_12 = 0.5 / 4095 + 1e-6  # 12 bits cannot hold k/255 exactly: within half a stored step
LOSSY = 6 / 255
MONO1 = "MONOCHROME1"
# width 2041 spans 2040 = 8 * 255 stored steps: every 8-bit grey level is exact
WINDOW = (1500.5, 2041)

VARIANTS = [  # (file name, options of write_dicom_variant, tolerance against the PNG)
    ("mono2-8bit.dcm", dict(), EXACT),
    ("mono1-8bit.dcm", dict(photometric=MONO1), EXACT),
    ("mono2-12bit.dcm", dict(bits=12), HALF_STEP_12),
    ("mono1-16bit.dcm", dict(bits=16, photometric=MONO1), EXACT),
    ("signed-12bit.dcm", dict(bits=12, signed=True), HALF_STEP_12),
    ("signed-16bit-rescale.dcm", dict(bits=16, signed=True, rescale=(0.5, -1024.0)), EXACT),
    ("rescale-12bit-cr.dcm", dict(bits=12, rescale=(1.0, -1024.0), modality="CR"), HALF_STEP_12),
    ("rescale-negative-slope.dcm", dict(bits=16, rescale=(-1.0, 65535.0)), EXACT),
    ("implicit-le-16bit.dcm", dict(bits=16, transfer_syntax="implicit_le"), EXACT),
    ("jpeg-baseline.dcm", dict(transfer_syntax="jpeg_baseline"), LOSSY),
    ("jpeg-baseline-mono1.dcm", dict(transfer_syntax="jpeg_baseline", photometric=MONO1), LOSSY),
    ("jpeg-lossless-8bit.dcm", dict(transfer_syntax="jpeg_lossless"), EXACT),
    ("jpeg-lossless-12bit-mono1.dcm", dict(transfer_syntax="jpeg_lossless", bits=12, photometric=MONO1), HALF_STEP_12),
    ("jpeg-lossless-16bit-signed.dcm", dict(transfer_syntax="jpeg_lossless", bits=16, signed=True), EXACT),
    ("jpeg-ls-12bit.dcm", dict(transfer_syntax="jpeg_ls", bits=12), HALF_STEP_12),
    ("jpeg-ls-16bit-mono1.dcm", dict(transfer_syntax="jpeg_ls", bits=16, photometric=MONO1), EXACT),
    ("jpeg2000-16bit.dcm", dict(transfer_syntax="jpeg2000", bits=16), EXACT),
    ("jpeg2000-12bit-signed.dcm", dict(transfer_syntax="jpeg2000", bits=12, signed=True), HALF_STEP_12),
    ("rle-8bit.dcm", dict(transfer_syntax="rle"), EXACT),
    ("rle-16bit-mono1.dcm", dict(transfer_syntax="rle", bits=16, photometric=MONO1), EXACT),
    ("window-12bit.dcm", dict(bits=12, window=WINDOW), EXACT),
    ("window-mono1-jpeg2000.dcm", dict(bits=12, window=WINDOW, photometric=MONO1, transfer_syntax="jpeg2000"), EXACT),
    ("window-rescale-jpeg-ls.dcm", dict(bits=12, window=(1030.5, 2041), rescale=(2, -100), transfer_syntax="jpeg_ls"),
     EXACT),
    ("voi-lut-12bit.dcm", dict(bits=12, voi_lut=SQUARE_LUT), EXACT),
    ("voi-lut-wins-over-window.dcm", dict(bits=12, voi_lut=SQUARE_LUT, window=(100, 50)), EXACT),
    ("voi-lut-mono1-rle.dcm", dict(bits=12, voi_lut=SQUARE_LUT, photometric=MONO1, transfer_syntax="rle"), EXACT),
    ("IM000001", dict(bits=16), EXACT),  # extension-less, found by its DICM preamble
]


@pytest.fixture(scope="module")
def png_reference(tmp_path_factory):
    """The picture as the project loads PNGs: PILReader in PIL's (rows, columns) order, scaled to [0, 1]."""
    path = tmp_path_factory.mktemp("png") / "picture.png"
    Image.fromarray(PICTURE).save(path)
    image = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True)(path)
    return np.asarray(image, dtype=np.float32) / 255


def _assert_read_error(path, *expected):
    """read_dicom raises a DicomReadError naming the file and saying each of `expected`."""
    with pytest.raises(DicomReadError) as info:
        read_dicom(path)
    message = str(info.value)
    assert str(path) in message
    for text in expected:
        assert re.search(text, message), message


@pytest.mark.parametrize(("name", "options", "atol"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_reads_as_the_png(tmp_path, png_reference, name, options, atol):
    path = tmp_path / name
    write_dicom_variant(PICTURE, path, **options)
    image, meta = read_dicom(path)
    assert image.dtype == np.float32 and image.shape == PICTURE.shape
    np.testing.assert_allclose(image, png_reference, rtol=0, atol=atol)
    assert np.abs(image - png_reference).mean() < 1 / 255
    assert meta["TransferSyntaxUID"] == TRANSFER_SYNTAXES[options.get("transfer_syntax", "explicit_le")]


@pytest.mark.parametrize(
    "options",
    [{"photometric": MONO1}, {"bits": 12, "window": WINDOW}, {"bits": 12, "voi_lut": SQUARE_LUT}],
    ids=["mono1", "window", "voi-lut"],
)
def test_stored_values_are_not_the_picture(tmp_path, options):
    """The variants above test the transforms: reading the stored values as they are would not give the picture."""
    write_dicom_variant(PICTURE, tmp_path / "x.dcm", **options)
    pixels = pydicom.dcmread(tmp_path / "x.dcm").pixel_array
    assert not np.allclose(pixels / pixels.max(), PICTURE / 255, atol=0.02)


def test_dicom_reader_through_load_image(tmp_path, png_reference):
    path = tmp_path / "IM0001"
    write_dicom_variant(PICTURE, path, bits=16, photometric="MONOCHROME1", pixel_spacing=(0.2, 0.1), patient_id="P7")
    image = LoadImage(reader=DicomReader(), image_only=True)(path)
    assert tuple(image.shape) == PICTURE.shape
    np.testing.assert_allclose(np.asarray(image), png_reference, atol=EXACT)
    assert image.meta["original_channel_dim"] == "no_channel"
    assert image.meta["PatientID"] == "P7" and image.meta["ImagerPixelSpacing"] == "0.2\\0.1"
    assert image.meta["filename_or_obj"] == str(path)
    np.testing.assert_allclose(np.asarray(image.affine), np.diag([0.2, 0.1, 1.0, 1.0]))

    channel_first = LoadImage(reader=DicomReader(), image_only=True, ensure_channel_first=True)(path)
    assert tuple(channel_first.shape) == (1, *PICTURE.shape)
    batch_of_one = LoadImage(reader=DicomReader(), image_only=True)([path])
    np.testing.assert_array_equal(np.asarray(batch_of_one), np.asarray(image))
    two = LoadImage(reader=DicomReader(), image_only=True)([path, path])
    assert tuple(two.shape) == (2, *PICTURE.shape) and two.meta["original_channel_dim"] == 0


def test_xray_reader_picks_dicom_or_png_by_content_without_a_failed_attempt(tmp_path, png_reference, caplog):
    """The chest bundle's reader: a PNG, a 16-bit MONOCHROME1 DICOM and an extension-less one give the same picture,
    each by its own reader, so nothing is logged as "unable to load"."""
    png, dicom, bare = tmp_path / "picture.png", tmp_path / "picture.dcm", tmp_path / "IM0002"
    Image.fromarray(PICTURE).save(png)
    write_dicom_variant(PICTURE, dicom, bits=16, photometric="MONOCHROME1")
    write_dicom_variant(PICTURE, bare, transfer_syntax="rle")
    load = LoadImage(reader=xray_readers(), image_only=True)
    with caplog.at_level(logging.INFO):
        for path in (png, dicom, bare):
            np.testing.assert_allclose(np.asarray(load(path)), png_reference, atol=EXACT, err_msg=path.name)
    assert "unable to load" not in caplog.text


def test_dicom_reader_in_a_dictionary_config(tmp_path, png_reference):
    path = tmp_path / "image.dcm"
    write_dicom_variant(PICTURE, path, transfer_syntax="jpeg_lossless", bits=12)
    config = {"_target_": "LoadImaged", "keys": "image", "reader": {"_target_": "segx_monai.io.DicomReader"}}
    load = ConfigParser({"load": config}).get_parsed_content("load")
    image = load({"image": str(path)})["image"]
    np.testing.assert_allclose(np.asarray(image), png_reference, atol=HALF_STEP_12)
    rgb_path = tmp_path / "overlay.dcm"
    save_atomic(overlay_capture(pydicom.dcmread(path), RGB, finding=None, series_uid=generate_uid()), rgb_path)
    rgb = LoadImaged("image", reader=DicomReader(), ensure_channel_first=True)({"image": rgb_path})["image"]
    assert tuple(rgb.shape) == (3, *PICTURE.shape)


def test_verify_suffix_accepts_what_is_dicom_accepts(tmp_path):
    write_dicom_variant(PICTURE, tmp_path / "IM0001")
    (tmp_path / "notes").write_text("not an image")
    Image.fromarray(PICTURE).save(tmp_path / "picture.png")
    reader = DicomReader()
    names = {"IM0001": True, "a.dcm": True, "B.DICOM": True, "notes": False, "picture.png": False, "missing": False}
    for name, expected in names.items():
        assert is_dicom(tmp_path / name) is expected, name
        assert reader.verify_suffix(str(tmp_path / name)) is expected, name
    assert reader.verify_suffix([tmp_path / "IM0001", tmp_path / "a.dcm"])
    assert not reader.verify_suffix([tmp_path / "IM0001", tmp_path / "notes"])


@pytest.mark.filterwarnings("ignore:PydicomReader")
def test_monai_pydicom_reader_transposes_pixel_array(tmp_path):
    """MONAI's PydicomReader swaps rows and columns (swap_ij=True by default); DicomReader keeps pixel_array's order."""
    path = tmp_path / "image.dcm"
    write_dicom_variant(PICTURE, path)
    pixel_array = pydicom.dcmread(path).pixel_array
    monai_image = LoadImage(reader=PydicomReader(), image_only=True)(path)
    assert tuple(monai_image.shape) == PICTURE.shape[::-1]
    np.testing.assert_array_equal(np.asarray(monai_image), pixel_array.T)
    ours = LoadImage(reader=DicomReader(), image_only=True)(path)
    np.testing.assert_allclose(np.asarray(ours), pixel_array / 255, atol=EXACT)


def test_metadata_is_carried_along(tmp_path):
    path = tmp_path / "image.dcm"
    uids = {"study_uid": generate_uid(), "series_uid": generate_uid(), "sop_uid": generate_uid()}
    write_dicom_variant(
        PICTURE, path, bits=12, modality="CR", patient_id="P001", view_position="AP", pixel_spacing=(0.15, 0.14), **uids
    )
    _, meta = read_dicom(path)
    assert meta == {
        "PatientID": "P001",
        "StudyInstanceUID": uids["study_uid"],
        "SeriesInstanceUID": uids["series_uid"],
        "SOPInstanceUID": uids["sop_uid"],
        "SOPClassUID": ComputedRadiographyImageStorage,
        "Modality": "CR",
        "ViewPosition": "AP",
        "PhotometricInterpretation": "MONOCHROME2",
        "PixelSpacing": None,
        "ImagerPixelSpacing": (0.15, 0.14),
        "BitsStored": 12,
        "TransferSyntaxUID": ExplicitVRLittleEndian,
        "filename": str(path),
    }


def test_cr_file_as_a_scanner_writes_it(tmp_path):
    """Built attribute by attribute: MONOCHROME1, 12 bits in 16, rescale, two windows, no writer involved."""
    stored = np.rint(PICTURE.astype(np.float64) / 255 * 4095).astype(np.uint16)
    stored = 4095 - stored  # MONOCHROME1: the white block is stored low
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "CR-17", "Doe^Jane", "CR"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PixelSpacing = ["0.15", "0.14"]
    ds.ImagerPixelSpacing = ["0.175", "0.175"]
    ds.Rows, ds.Columns = PICTURE.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1.0", "-512", "US"
    ds.WindowCenter, ds.WindowWidth = ["1000", "1500"], ["2000", "3000"]
    ds.WindowCenterWidthExplanation = ["NORMAL", "WIDE"]
    ds.PixelData = stored.astype("<u2").tobytes()
    path = tmp_path / "CR000017"
    ds.save_as(path, enforce_file_format=True)

    image, meta = read_dicom(path)
    modality = stored - 512.0
    center, width = 1000, 2000  # the first window
    expected = 1 - np.clip((modality - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=EXACT)
    assert image[0, 0] == 1 and 0 < image.mean() < 1  # the white block stays top-left; the window clips
    assert meta["PixelSpacing"] == (0.15, 0.14) and meta["BitsStored"] == 12
    loaded = LoadImage(reader=DicomReader(), image_only=True)(path)
    np.testing.assert_allclose(np.asarray(loaded.affine), np.diag([0.15, 0.14, 1.0, 1.0]))  # PixelSpacing wins


def test_rgb_jpeg_ybr_full_422_reads_as_rgb(tmp_path):
    """A dermoscopy-style JPEG baseline colour image (YBR_FULL_422) comes back as RGB in (rows, columns, 3)."""
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(RGB, "RGB", 8, generate_instance_uid=False)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "derm.dcm", enforce_file_format=True)
    image, meta = read_dicom(tmp_path / "derm.dcm")
    assert image.shape == RGB.shape and meta["PhotometricInterpretation"] == "YBR_FULL_422"
    assert np.abs(image - RGB / 255).mean() < 2 / 255


def test_rgb_jpeg2000_ybr_rct_reads_as_rgb(tmp_path):
    """Lossless JPEG 2000 with the reversible colour transform (YBR_RCT) comes back as the exact RGB."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(RGB, "RGB", 8, generate_instance_uid=False)
    ds.compress(JPEG2000Lossless, use_mct=True, generate_instance_uid=False)
    ds.PhotometricInterpretation = "YBR_RCT"
    ds.save_as(tmp_path / "derm.dcm", enforce_file_format=True)
    image, _ = read_dicom(tmp_path / "derm.dcm")
    np.testing.assert_array_equal(np.rint(image * 255).astype(np.uint8), RGB)


def _save(ds: Dataset, path) -> None:
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)


def test_no_pixel_data(tmp_path):
    ds = write_dicom_variant(PICTURE, tmp_path / "x.dcm")
    del ds.PixelData
    _save(ds, tmp_path / "x.dcm")
    _assert_read_error(tmp_path / "x.dcm", r"no Pixel Data", "expected an image")


def test_unknown_transfer_syntax(tmp_path):
    ds = write_dicom_variant(PICTURE, tmp_path / "x.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7.8"
    _save(ds, tmp_path / "x.dcm")
    _assert_read_error(tmp_path / "x.dcm", "no pixel data decoder", "1.2.3.4.5.6.7.8")


def test_transfer_syntax_pydicom_cannot_decode(tmp_path):
    ds = write_dicom_variant(PICTURE, tmp_path / "x.dcm")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    _save(ds, tmp_path / "x.dcm")
    _assert_read_error(tmp_path / "x.dcm", "no pixel data decoder", "MPEG2")


def test_transfer_syntax_without_installed_decoder(tmp_path, monkeypatch):
    write_dicom_variant(PICTURE, tmp_path / "x.dcm", transfer_syntax="jpeg_ls", bits=12)
    # pretend the JPEG-LS decoders are not installed, as pydicom records missing plugins
    decoder = pydicom.pixels.get_decoder(JPEGLSLossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pyjpegls": ("pyjpegls",)})
    _assert_read_error(tmp_path / "x.dcm", "no decoder installed", "JPEG-LS Lossless", "pyjpegls")


def test_multi_frame(tmp_path):
    ds = write_dicom_variant(PICTURE, tmp_path / "x.dcm")
    ds.set_pixel_data(np.stack([PICTURE, PICTURE]), "MONOCHROME2", 8, generate_instance_uid=False)
    _save(ds, tmp_path / "x.dcm")
    _assert_read_error(tmp_path / "x.dcm", "2 frames", "2D single-frame")


def test_unsupported_photometric_interpretation(tmp_path):
    ds = write_dicom_variant(PICTURE, tmp_path / "x.dcm")
    ds.PhotometricInterpretation = "PALETTE COLOR"
    _save(ds, tmp_path / "x.dcm")
    _assert_read_error(tmp_path / "x.dcm", "PALETTE COLOR", "MONOCHROME2")


def test_truncated_uncompressed(tmp_path):
    write_dicom_variant(PICTURE, tmp_path / "x.dcm", bits=16)
    data = (tmp_path / "x.dcm").read_bytes()
    (tmp_path / "x.dcm").write_bytes(data[:-1000])
    _assert_read_error(tmp_path / "x.dcm", "could not decode the pixel data")


@pytest.mark.filterwarnings("ignore:End of file reached")
def test_truncated_compressed(tmp_path):
    write_dicom_variant(PICTURE, tmp_path / "x.dcm", transfer_syntax="jpeg_lossless")
    data = (tmp_path / "x.dcm").read_bytes()
    (tmp_path / "x.dcm").write_bytes(data[:-200])
    _assert_read_error(tmp_path / "x.dcm", "truncated or corrupt")


def test_not_dicom(tmp_path):
    (tmp_path / "notes.dcm").write_text("hello")
    _assert_read_error(tmp_path / "notes.dcm", "not a readable DICOM file", "DICM")
    Image.fromarray(PICTURE).save(tmp_path / "picture.png")
    _assert_read_error(tmp_path / "picture.png", "not a readable DICOM file")


def test_writer_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="8-bit"):
        write_dicom_variant(PICTURE, tmp_path / "x.dcm", transfer_syntax="jpeg_baseline", bits=12)
    with pytest.raises(ValueError, match="outside the 8-bit range"):
        write_dicom_variant(PICTURE, tmp_path / "x.dcm", window=(200, 300))
    with pytest.raises(ValueError, match="unsupported transfer syntax"):
        write_dicom_variant(PICTURE, tmp_path / "x.dcm", transfer_syntax="1.2.840.10008.1.2.4.100")
    with pytest.raises(ValueError, match=r"float in \[0, 1\]"):
        write_dicom_variant(PICTURE * 2.0, tmp_path / "x.dcm")


def _non_image_dicom(path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, generate_uid()
    ds.save_as(path, enforce_file_format=True)


def test_dicom_datalist(tmp_path, caplog):
    root = tmp_path / "studies"
    for relative, patient, series in [
        ("P2/ST1/SE1/IM0001", "P2", "1.2.3.1"),
        ("P1/ST1/SE2/IM0001", "P1", "1.2.3.2"),
        ("P1/ST1/SE1/image.dcm", "P1", "1.2.3.1"),
    ]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        write_dicom_variant(
            PICTURE, root / relative, patient_id=patient, study_uid=f"1.2.{patient[1]}", series_uid=series
        )
    (root / "P1" / "readme.txt").write_text("exported from PACS")
    _non_image_dicom(root / "P1" / "REPORT")
    with caplog.at_level(logging.INFO, logger="segx_monai.io.dicom"):
        items = dicom_datalist(root)
    expected_order = ("P1/ST1/SE1/image.dcm", "P1/ST1/SE2/IM0001", "P2/ST1/SE1/IM0001")
    assert [item["image"] for item in items] == [str(root / relative) for relative in expected_order]
    assert items[0] == {
        "image": str(root / "P1/ST1/SE1/image.dcm"),
        "patient_id": "P1",
        "study_uid": "1.2.1",
        "series_uid": "1.2.3.1",
        "sop_uid": pydicom.dcmread(root / "P1/ST1/SE1/image.dcm").SOPInstanceUID,
    }
    assert "3 DICOM images, 2 other files skipped" in caplog.text


def test_dicom_datalist_without_images(tmp_path):
    with pytest.raises(DicomReadError, match=re.escape(str(tmp_path))):
        dicom_datalist(tmp_path)
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DicomReadError, match="no DICOM images"):
        dicom_datalist(tmp_path)


def test_harmless_pydicom_warnings_do_not_refuse_an_image(tmp_path):
    """Excess padding after the pixel data and a NumberOfFrames of 0 are logged by pydicom but decode correctly:
    only a failed or replaced decoder makes an image an error."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16) * 16
    for name, padding, frames in (("padded.dcm", b"\0" * 64, None), ("zero_frames.dcm", b"", 0)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = "DX", 16, 16, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        if frames is not None:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.tobytes() + padding
        ds.save_as(tmp_path / name, enforce_file_format=True)
        image, _ = read_dicom(tmp_path / name)
        assert image.shape == (16, 16) and image.min() == 0 and image.max() > 0.9, name
