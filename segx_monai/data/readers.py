"""Image readers of the bundles: arrays in (rows, columns) order, like ``PIL``/``numpy`` and DICOM's ``pixel_array``.

MONAI's ``PILReader`` transposes 2D images by default; the bundles keep numpy order everywhere so that maps,
masks and overlays written back to PNG or DICOM line up with the source image without a transpose.

Bounded cost per image: a file over ``max_image_pixels`` (default :data:`MAX_IMAGE_PIXELS`) is refused from its
header, before decoding. Given the network's ``image_size``, a large JPEG is decoded reduced (Pillow's draft mode,
1/2, 1/4 or 1/8 scale) and any picture or DICOM is then box-averaged by an integer factor (``Image.reduce``), both
never below twice ``image_size`` on either side: the anti-aliased resize that follows costs the input's pixels times
its kernel width, minutes for an 8000x6000 image read whole. The stored size stays in the metadata
(:data:`SOURCE_SHAPE`, read by :func:`original_size`), so that maps and masks are written back at the file's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import ImageReader, PILReader
from monai.transforms import AsDiscreted, EnsureChannelFirstd, EnsureTyped, LoadImaged, Resized
from monai.utils import ensure_tuple
from PIL import Image

from segx_monai.data.datalist import DatasetError
from segx_monai.io.dicom import DicomReader

MAX_IMAGE_PIXELS = 64_000_000  # 8000x8000: below Pillow's own bomb warning (89.5 million pixels)
SOURCE_SHAPE = "source_shape"  # metadata key: (rows, columns) of the image as stored, before reduced decoding


def _name(image: Image.Image) -> str:
    """How an error names the file of an opened image."""
    return getattr(image, "filename", "") or "image"


def check_pixels(name, width: int, height: int, max_image_pixels: int) -> None:
    """Refuse an image of more than ``max_image_pixels`` pixels, naming the file, its size and the limit."""
    if width * height > max_image_pixels:
        raise DatasetError(
            f"{name}: {width}x{height} = {width * height} pixels, over max_image_pixels={max_image_pixels}; "
            "expected a smaller image (downscale it first) or a higher max_image_pixels."
        )


def _grey_unit(image: Image.Image) -> np.ndarray | None:
    """A 16- or 32-bit integer grey image as float32 in [0, 1] by its bit depth (None for any other mode).

    A 16-bit PNG spans 0-65535 whatever the picture's own precision: the PNG rules scale samples to the full bit
    depth (the sBIT chunk only records the original one, and Pillow ignores it), so a 12-bit picture stored that way
    reads right, and one holding raw 0-4095 values reads dark (save it scaled, or as DICOM with its BitsStored).
    Mode "I" (32-bit) holds 16-bit samples in the formats read here; values outside 0-65535 are refused.
    """
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        array = np.asarray(image)
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise DatasetError(f"{_name(image)}: 32-bit grey values {low}..{high}; expected 0..65535 (at most 16 bits per sample).")
        return array.astype(np.float32) / 65535.0
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB; 16-/32-bit grey scaled to 0-255 by its bit depth (``convert`` would clip it to 255)."""
    grey = _grey_unit(image)
    return image.convert("RGB") if grey is None else Image.fromarray(np.rint(grey * 255).astype(np.uint8)).convert("RGB")


def unit_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL image as one float channel in [0, 1]: 8-bit modes (L, RGB, RGBA, P) / 255, 16-bit and 32-bit integer / 65535."""
    grey = _grey_unit(image)
    return Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255.0 if grey is None else grey)


def binary_mask(image: Image.Image) -> Image.Image:
    """A mask image as 0/255 "L", whether the file stores 0/1, 0/255 or (16-bit) 0/65535; any other values are
    refused, naming them: thresholding them at one fixed level would silently empty a 0/1 mask or fill a grey one."""
    array = np.asarray(image) if image.mode.startswith("I") else np.asarray(image.convert("L"))
    values = np.unique(array).tolist()
    if not any(set(values) <= {0, top} for top in (1, 255, 65535)):
        shown = ", ".join(map(str, values[:8])) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
        raise DatasetError(f"{_name(image)}: mask values {shown}; expected a binary mask, 0 outside and 1 or 255 inside.")
    return Image.fromarray(((array > 0) * 255).astype(np.uint8))


def _min_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """(rows, cols) an image is never reduced below: twice the network's input size."""
    if image_size is None:
        return None
    rows, cols = (image_size, image_size) if np.isscalar(image_size) else image_size
    return 2 * int(rows), 2 * int(cols)


def _reduce(image: Image.Image, min_size: tuple[int, int] | None) -> Image.Image:
    """``image`` box-averaged by the largest integer factor that keeps it at least ``min_size`` (Pillow's ``reduce``)."""
    factor = 1 if min_size is None else min(image.height // min_size[0], image.width // min_size[1])
    return image.reduce(factor) if factor >= 2 else image


class PictureReader(PILReader):
    """PNG/JPEG/BMP by PIL in numpy order, refused over ``max_image_pixels``, decoded reduced given ``image_size``
    (see the module's notes), with ``converter`` applied before the reduction."""

    def __init__(self, converter, image_size: int | Sequence[int] | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__(converter=converter, reverse_indexing=False)
        if not isinstance(max_image_pixels, int) or isinstance(max_image_pixels, bool) or max_image_pixels < 1:
            raise ValueError(f"max_image_pixels is {max_image_pixels!r}; expected a positive whole number of pixels.")
        self.min_size, self.max_image_pixels = _min_size(image_size), max_image_pixels

    def read(self, data, **kwargs):
        """The file name(s), opened in :meth:`get_data`: MONAI's ``LoadImage`` answers an error in ``read`` by trying
        its default readers (``PILReader`` would then load the refused file, transposed), not in ``get_data``."""
        return ensure_tuple(data), {**self.kwargs, **kwargs}

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        names, kwargs = img
        return super().get_data([self._open(name, **kwargs) for name in names])

    def _open(self, name, **kwargs) -> Image.Image:
        try:
            image = Image.open(name, **kwargs)
        except Image.DecompressionBombError as e:  # over Pillow's own hard limit, twice Image.MAX_IMAGE_PIXELS
            raise DatasetError(f"{name}: {str(e).rstrip('.')}; expected at most max_image_pixels={self.max_image_pixels} pixels.") from e
        check_pixels(name, image.width, image.height, self.max_image_pixels)
        source = (image.height, image.width)
        if self.min_size is not None:
            image.draft(None, (self.min_size[1], self.min_size[0]))  # JPEG only; other formats ignore it
        image = _reduce(self.converter(image) if callable(self.converter) else image, self.min_size)
        image.info[SOURCE_SHAPE] = source
        return image

    def _get_meta_dict(self, img) -> dict:
        return {**super()._get_meta_dict(img), SOURCE_SHAPE: np.asarray(img.info.get(SOURCE_SHAPE, (img.height, img.width)))}


def original_size(image) -> torch.Tensor:
    """(rows, cols) of a loaded 2D image (channel-first or not) as stored in its file, also when decoded reduced."""
    shape = getattr(image, "meta", {}).get(SOURCE_SHAPE)
    return torch.as_tensor(shape if shape is not None else image.shape[-2:]).reshape(2)


def rgb_reader(image_size: int | Sequence[int] | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> ImageFileReader:
    """Colour images (JPEG/PNG, any PIL mode: CMYK, palette, 8- or 16-bit grey; DICOM, grey or colour) as
    ``(rows, cols, 3)`` RGB in 0-255."""
    return ImageFileReader(image_size, max_image_pixels, to_rgb, dicom_as_rgb)


def dicom_as_rgb(picture: np.ndarray) -> np.ndarray:
    """A DICOM picture in [0, 1], grey ``(rows, cols)`` or colour ``(rows, cols, 3)``, as 8-bit RGB, as ``to_rgb``
    gives a PIL picture."""
    picture = np.rint(np.asarray(picture) * 255).astype(np.uint8)
    return np.repeat(picture[..., None], 3, axis=-1) if picture.ndim == 2 else picture


def mask_reader(max_image_pixels: int = MAX_IMAGE_PIXELS) -> PictureReader:
    """Mask images (0/1 or 0/255, any PIL mode) as single-channel 0/255 ``(rows, cols)``, never reduced."""
    return PictureReader(binary_mask, None, max_image_pixels)


def load_mask(keys: str | Sequence[str], image_size: int, max_image_pixels: int = MAX_IMAGE_PIXELS, threshold: int = 127) -> list:
    """Transforms loading region masks under ``keys`` as the networks see their image: ``(1, size, size)`` 0/1,
    nearest-resized; a pixel >= ``threshold`` (of 0/255) is in the region. The segmenter's labels, a guided
    classifier's regions."""
    return [
        LoadImaged(keys, reader=mask_reader(max_image_pixels), image_only=True),
        EnsureChannelFirstd(keys, channel_dim="no_channel"),
        Resized(keys, spatial_size=(image_size, image_size), mode="nearest"),
        AsDiscreted(keys, threshold=threshold),
        EnsureTyped(keys, track_meta=False),
    ]


class ImageFileReader(ImageReader):
    """Image files in numpy order: DICOM (``.dcm`` or a DICM preamble) by :class:`DicomReader` (rescale, VOI LUT or
    window, MONOCHROME1 inversion, so a DICOM and the PNG exported from it give the same array) then ``dicom_picture``,
    anything else (PNG, JPEG) by PIL then ``converter``; by default one [0, 1] channel (chest X-rays).

    One reader that picks by content, rather than MONAI's list of readers, which tries each in turn and logs every
    PNG's failed DICOM attempt.
    """

    def __init__(
        self, image_size: int | Sequence[int] | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS,
        converter=unit_grayscale, dicom_picture=None,
    ) -> None:
        super().__init__()
        self.dicom, self.dicom_picture = DicomReader(), dicom_picture
        self.picture = PictureReader(converter, image_size, max_image_pixels)

    def _reader(self, filename) -> ImageReader:
        return self.dicom if self.dicom.verify_suffix(filename) else self.picture

    def verify_suffix(self, filename) -> bool:
        return self.dicom.verify_suffix(filename) or self.picture.verify_suffix(filename)

    def read(self, data, **kwargs):
        reader = self._reader(data)
        return reader, reader.read(data, **kwargs)

    def get_data(self, img):
        reader, image = img
        if reader is self.dicom:  # checked here, not in read, for the reason given in PictureReader.read
            for ds in image if isinstance(image, (list, tuple)) else [image]:  # a Dataset iterates over its elements
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                check_pixels(ds.filename, int(ds.get("Columns", 0)), int(ds.get("Rows", 0)) * frames, self.picture.max_image_pixels)
        array, meta = reader.get_data(image)
        if reader is self.dicom and self.dicom_picture is not None:
            array = self.dicom_picture(array)
            meta["original_channel_dim"] = "no_channel" if array.ndim == 2 else -1
        # reduced like a picture, so a DICOM and its PNG still match (PIL reduces float grey and 8-bit colour)
        if reader is self.dicom and (array.ndim == 2 or array.dtype == np.uint8) and self.picture.min_size is not None:
            reduced = np.asarray(_reduce(Image.fromarray(array if array.ndim == 3 else array.astype(np.float32)), self.picture.min_size))
            factors = np.asarray(array.shape[:2]) / np.asarray(reduced.shape[:2])  # pixel spacing grows by the reduction
            meta.update({SOURCE_SHAPE: np.asarray(array.shape[:2]), "spatial_shape": np.asarray(reduced.shape[:2])})
            meta["affine"] = meta["affine"] @ np.diag([*factors, 1.0, 1.0])
            array = reduced
        return array, meta


def xray_readers(image_size: int | Sequence[int] | None = None, max_image_pixels: int = MAX_IMAGE_PIXELS) -> list[ImageReader]:
    """The readers of the chest bundle's images (a list, as ``LoadImaged(reader=...)`` takes it)."""
    return [ImageFileReader(image_size, max_image_pixels)]
