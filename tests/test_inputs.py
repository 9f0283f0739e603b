"""Inputs that used to be read wrongly without a word: 16-bit pictures, 0/1 masks, negative boxes, symlinked folders,
non-UTF-8 metadata, inconsistent lesion ids, and pictures too large to read whole."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImage, LoadImaged
from PIL import Image

from segx_monai.data.chestx_det import CHESTX_DET10_FINDINGS, FindingMasksd, read_chestx_det_json
from segx_monai.data.datalist import DatasetError, find_files, image_items
from segx_monai.data.ham10000 import index_ham10000, read_ham_metadata
from segx_monai.data.readers import SOURCE_SHAPE, mask_reader, rgb_reader, to_rgb, unit_grayscale, xray_readers
from segx_monai.io import write_dicom_variant

REPO = Path(__file__).resolve().parents[1]
RAMP16 = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)


def bundle_transform(bundle: str, config: str, keys: tuple[str, ...] = ("load_image",), **overrides) -> Compose:
    """The lists ``keys`` of a bundle config composed after inference.yaml (its readers and transforms as the
    workflows build them), with overrides."""
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / name) for name in dict.fromkeys(["inference.yaml", config])])
    parser.update(overrides)
    parser.get_parsed_content("imports")
    return Compose([t for key in keys for t in parser.get_parsed_content(key)])


def error_text(excinfo) -> str:
    """The messages of an exception and of its causes (MONAI's Compose wraps a transform's error)."""
    messages, error = [], excinfo.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return "\n".join(messages)


def header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG claiming ``width`` x ``height`` grey pixels, with empty pixel data: opens, but cannot be decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b""))
    return path


def smooth_rgb(rows: int, cols: int) -> np.ndarray:
    """A smooth colour picture (gradients), so that reduced decoding and full decoding agree closely."""
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([255 * x / cols, 255 * y / rows, 128 + 100 * np.sin(x / cols * 6) * np.cos(y / rows * 4)], -1).astype(np.uint8)


# ------------------------------------------------------------------------------------------- 16-bit pictures


def test_16bit_grey_png_reads_to_its_range_in_both_bundles(tmp_path):
    """Skin: PIL's convert("RGB") clipped every 16-bit value to 255; the chest reader keeps its [0, 1] range."""
    path = tmp_path / "grey16.png"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode == "I;16"
    skin = bundle_transform("ham_segx", "train_classifier.yaml", image_size=32)({"image": str(path)})["image"]
    assert skin.shape == (3, 32, 32)
    assert float(skin.min()) < 0.05 and float(skin.max()) > 0.95 and abs(float(skin.mean()) - 0.5) < 0.05
    chest = bundle_transform("chestx_segx", "train_classifier.yaml", image_size=32)({"image": str(path)})["image"]
    assert float(chest.min()) < 0.05 and float(chest.max()) > 0.95 and abs(float(chest.mean()) - 0.5) < 0.05


def test_grey_modes_are_read_by_their_bit_depth():
    """I;16, I;16B and I (32-bit holding 16-bit samples) give the same picture; a 32-bit value over 16 bits is refused."""
    for image in (Image.fromarray(RAMP16), Image.fromarray(RAMP16.astype(">u2")), Image.fromarray(RAMP16.astype(np.int32))):
        np.testing.assert_allclose(np.asarray(unit_grayscale(image)), RAMP16 / 65535.0, atol=1e-6, err_msg=image.mode)
        rgb = np.asarray(to_rgb(image))
        assert rgb.shape == (48, 64, 3), image.mode
        np.testing.assert_array_equal(rgb[..., 1], np.rint(RAMP16 / 257.0).astype(np.uint8), err_msg=image.mode)
    assert {Image.fromarray(RAMP16.astype(">u2")).mode, Image.fromarray(RAMP16.astype(np.int32)).mode} == {"I;16B", "I"}
    wide = Image.fromarray((RAMP16.astype(np.int32) * 2))
    with pytest.raises(DatasetError, match=r"32-bit grey values 0\.\.131070; expected 0\.\.65535"):
        unit_grayscale(wide)


# ------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("bundle", ["ham_segx", "chestx_segx"])
def test_masks_stored_as_0_1_or_0_255_give_the_same_labels(tmp_path, bundle):
    """A 0/1 mask thresholded at 127 was an empty label (a segmenter trained to Dice 0.0 without a word)."""
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(tmp_path / "image.png")
    region = np.zeros((40, 40), np.uint8)
    region[8:30, 10:25] = 1
    labels = []
    for top in (1, 255):
        Image.fromarray(region * top).save(tmp_path / f"mask{top}.png")
        item = {"image": str(tmp_path / "image.png"), "label": str(tmp_path / f"mask{top}.png"), "boxes": [], "polygons": [], "findings": []}
        labels.append(np.asarray(bundle_transform(bundle, "train_segmenter.yaml", ("load_image", "load_label"), image_size=20)(item)["label"]))
    np.testing.assert_array_equal(labels[0], labels[1])
    assert labels[0].sum() == region[::2, ::2].sum() > 0


def test_a_mask_with_other_values_is_refused_naming_them(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5], mask[0, 0] = 255, 128
    path = tmp_path / "ISIC_0000001_segmentation.png"
    Image.fromarray(mask).save(path)
    with pytest.raises(DatasetError, match=rf"{path}: mask values 0, 128, 255; expected a binary mask, 0 outside and 1 or 255 inside"):
        LoadImaged("mask", reader=mask_reader(), image_only=True)({"mask": str(path)})


# ---------------------------------------------------------------------------------------------- annotations


@pytest.mark.parametrize(
    "entry, shown",
    [
        ({"file_name": "2.png", "syms": ["Nodule"], "boxes": [[-3, 2, 10, 12]]}, r"box \[-3, 2, 10, 12\] has a negative coordinate"),
        ({"file_name": "2.png", "syms": ["Mass"], "boxes": [[1, 1, 9, 9]], "polygons": [[[1, 1], [9, -1], [9, 9]]]}, r"polygon .* has a negative coordinate"),
    ],
)
def test_negative_annotation_coordinates_are_refused(tmp_path, entry, shown):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"file_name": "1.png", "syms": [], "boxes": []}, entry]))
    with pytest.raises(DatasetError, match=rf"{path}, entry 1 \(file_name '2.png'\): {shown}"):
        read_chestx_det_json(path)


# ------------------------------------------------------------------------------------------------ folders


def test_symlinked_image_folders_are_followed_once(tmp_path):
    """Data sets are often linked in; a link loop (back to the root) must end, not index the images again."""
    real = tmp_path / "storage" / "part_1"
    real.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(real / "ISIC_0000001.jpg")
    root = tmp_path / "HAM10000"
    root.mkdir()
    os.symlink(real, root / "HAM10000_images_part_1")
    os.symlink(root, real / "back_to_root")
    assert find_files(root, (".jpg",)) == {"ISIC_0000001": root / "HAM10000_images_part_1" / "ISIC_0000001.jpg"}
    assert [item["image_id"] for item in image_items(root)] == ["ISIC_0000001"]


# --------------------------------------------------------------------------------------------- metadata CSV


def test_a_latin1_byte_in_the_metadata_names_file_line_and_byte(tmp_path):
    path = tmp_path / "HAM10000_metadata.csv"
    path.write_bytes(b"lesion_id,image_id,dx,localization\nHAM_1,ISIC_1,nv,back\nHAM_2,ISIC_2,mel,t\xeate\n")
    with pytest.raises(DatasetError, match=rf"{path}, line 3: byte 0xea is not UTF-8 .*expected a UTF-8 file"):
        read_ham_metadata(path)


def test_inconsistent_lesion_ids_name_the_file_and_rows(tmp_path):
    path = tmp_path / "HAM10000_metadata.csv"
    path.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2,ISIC_2,nv\nHAM_1,ISIC_3,mel\nHAM_1,ISIC_4,nv\n")
    with pytest.raises(DatasetError, match=r"HAM10000_metadata.csv: lesion_id 'HAM_1' has 2 diagnoses \(nv at lines 2, 5; mel at line 4\)"):
        index_ham10000(tmp_path, verify_images=False)
    path.write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\n,ISIC_2,nv\n ,ISIC_3,mel\n")
    with pytest.raises(DatasetError, match=rf"{path}, lines 3, 4: empty lesion_id"):
        index_ham10000(tmp_path, verify_images=False)


# ------------------------------------------------------------------------------------------- large pictures


def test_a_large_jpeg_is_decoded_reduced_and_keeps_its_size_for_the_outputs(tmp_path):
    picture = smooth_rgb(768, 1024)
    path = tmp_path / "large.jpg"
    Image.fromarray(picture).save(path, quality=95)
    reduced = LoadImage(reader=rgb_reader(32), image_only=True)(str(path))
    assert 64 <= reduced.shape[0] < 768 and reduced.shape[1] < 1024  # draft: at least twice the network's input
    assert tuple(reduced.meta[SOURCE_SHAPE]) == (768, 1024)
    new = bundle_transform("ham_segx", "train_classifier.yaml", image_size=32)({"image": str(path)})
    assert new["image"].shape == (3, 32, 32) and new["original_size"].tolist() == [768, 1024]
    full = LoadImage(reader=rgb_reader(), image_only=True)(str(path))
    assert full.shape == (768, 1024, 3)
    whole = {"load_image#0#reader": "$segx_monai.data.readers.rgb_reader()"}  # decoded whole, as before
    old = bundle_transform("ham_segx", "train_classifier.yaml", image_size=32, **whole)({"image": str(path)})
    difference = np.abs(np.asarray(new["image"]) - np.asarray(old["image"]))  # the edge pixels differ most: padding
    assert difference.mean() < 0.01 and difference[:, 1:-1, 1:-1].max() < 0.02


def test_max_image_pixels_is_a_config_key_that_refuses_larger_images(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth_rgb(100, 200)).save(path)
    loaded = bundle_transform("ham_segx", "train_classifier.yaml", image_size=32, max_image_pixels=20000)({"image": str(path)})
    assert loaded["image"].shape == (3, 32, 32)
    with pytest.raises(Exception) as excinfo:
        bundle_transform("ham_segx", "train_classifier.yaml", image_size=32, max_image_pixels=19999)({"image": str(path)})
    assert f"{path}: 200x100 = 20000 pixels, over max_image_pixels=19999" in error_text(excinfo)


@pytest.mark.parametrize("reader", [rgb_reader, xray_readers, mask_reader])
def test_oversized_images_are_refused_from_their_header(tmp_path, reader):
    """Over the default limit, and over Pillow's own hard limit (its DecompressionBombError), before any decoding."""
    over_default = header_only_png(tmp_path / "huge.png", 10000, 8000)
    with pytest.raises(DatasetError, match=rf"{over_default}: 10000x8000 = 80000000 pixels, over max_image_pixels=64000000"):
        LoadImage(reader=reader(), image_only=True)(str(over_default))
    bomb = header_only_png(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(DatasetError, match=rf"{bomb}: Image size \(400000000 pixels\) exceeds limit .*; expected at most max_image_pixels=64000000"):
        LoadImage(reader=reader(), image_only=True)(str(bomb))


def test_chest_pictures_and_dicoms_are_reduced_alike_and_annotated_at_their_size(tmp_path):
    y, x = np.mgrid[0:256, 0:320]
    picture = np.rint(255 * (x + y) / (256 + 320)).astype(np.uint8)
    png, dicom = tmp_path / "1.png", tmp_path / "1.dcm"
    Image.fromarray(picture).save(png)
    write_dicom_variant(picture, dicom)
    load = LoadImage(reader=xray_readers(32), image_only=True)
    from_png, from_dicom = load(str(png)), load(str(dicom))
    assert from_png.shape == (64, 80)  # box-averaged by 4: still twice the network's 32
    np.testing.assert_allclose(np.asarray(from_dicom), np.asarray(from_png), atol=1e-6)
    for image in (from_png, from_dicom):
        assert tuple(image.meta[SOURCE_SHAPE]) == (256, 320)
    item = {"image": str(png), "image_id": "1", "findings": ["Nodule"], "boxes": [[300, 10, 319, 20]]}
    loaded = Compose([LoadImaged("image", reader=xray_readers(32), image_only=True), EnsureChannelFirstd("image", channel_dim="no_channel")])(item)
    masks = FindingMasksd("image")(loaded)["finding_masks"]
    assert masks.shape == (len(CHESTX_DET10_FINDINGS), 256, 320) and masks.sum() == 20 * 11
