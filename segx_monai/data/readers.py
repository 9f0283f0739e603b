"""Image readers of the bundles: arrays in (rows, columns) order, like ``PIL``/``numpy`` and DICOM's ``pixel_array``.

MONAI's ``PILReader`` transposes 2D images by default; the bundles keep numpy order everywhere so that maps,
masks and overlays written back to PNG or DICOM line up with the source image without a transpose.
"""

from __future__ import annotations

import numpy as np
from monai.data import PILReader
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


def xray_readers() -> list:
    """Chest X-ray readers: DICOM (``.dcm`` or a DICM preamble) and PNG/JPEG, both to one [0, 1] channel in numpy order.

    The DICOM reader applies rescale, VOI LUT or window and MONOCHROME1 inversion, so a DICOM and the PNG exported
    from it give the same array.
    """
    return [PILReader(reverse_indexing=False, converter=unit_grayscale), DicomReader()]
