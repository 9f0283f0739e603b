"""Image readers of the bundles: arrays in (rows, columns) order, like ``PIL``/``numpy`` and DICOM's ``pixel_array``.

MONAI's ``PILReader`` transposes 2D images by default; the bundles keep numpy order everywhere so that maps,
masks and overlays written back to PNG or DICOM line up with the source image without a transpose.
"""

from __future__ import annotations

import numpy as np
from monai.data import ImageReader, PILReader
from PIL import Image

from segx_monai.io.dicom import DicomReader


def rgb_reader() -> PILReader:
    """Colour images (JPEG/PNG, any PIL mode: CMYK, palette, grey) as ``(rows, cols, 3)`` RGB."""
    return PILReader(reverse_indexing=False, converter=lambda image: image.convert("RGB"))


def mask_reader() -> PILReader:
    """Mask images (0/255 PNG, any PIL mode) as single-channel ``(rows, cols)``."""
    return PILReader(reverse_indexing=False, converter=lambda image: image.convert("L"))



def unit_grayscale(image: Image.Image) -> Image.Image:
    """Any PIL image as one float channel in [0, 1]: 8-bit modes (L, RGB, RGBA, P) / 255, 16-bit and 32-bit integer / 65535."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return Image.fromarray(np.asarray(image, dtype=np.float32) / 65535.0)
    return Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)


class XRayReader(ImageReader):
    """Chest X-ray files to one [0, 1] channel in numpy order: DICOM (``.dcm`` or a DICM preamble) by
    :class:`DicomReader` (rescale, VOI LUT or window, MONOCHROME1 inversion, so a DICOM and the PNG exported from it
    give the same array), anything else (PNG, JPEG) by PIL.

    One reader that picks by content, rather than MONAI's list of readers, which tries each in turn and logs every
    PNG's failed DICOM attempt.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dicom = DicomReader()
        self.picture = PILReader(reverse_indexing=False, converter=unit_grayscale)

    def _reader(self, filename) -> ImageReader:
        return self.dicom if self.dicom.verify_suffix(filename) else self.picture

    def verify_suffix(self, filename) -> bool:
        return self.dicom.verify_suffix(filename) or self.picture.verify_suffix(filename)

    def read(self, data, **kwargs):
        reader = self._reader(data)
        return reader, reader.read(data, **kwargs)

    def get_data(self, img):
        reader, image = img
        return reader.get_data(image)


def xray_readers() -> list[ImageReader]:
    """The readers of the chest bundle's images (a list, as ``LoadImaged(reader=...)`` takes it)."""
    return [XRayReader()]
