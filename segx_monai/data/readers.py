"""Image readers of the bundles: arrays in (rows, columns) order, like ``PIL``/``numpy`` and DICOM's ``pixel_array``.

MONAI's ``PILReader`` transposes 2D images by default; the bundles keep numpy order everywhere so that maps,
masks and overlays written back to PNG or DICOM line up with the source image without a transpose.
"""

from __future__ import annotations

from monai.data import PILReader


def rgb_reader() -> PILReader:
    """Colour images (JPEG/PNG, any PIL mode: CMYK, palette, grey) as ``(rows, cols, 3)`` RGB."""
    return PILReader(reverse_indexing=False, converter=lambda image: image.convert("RGB"))


def mask_reader() -> PILReader:
    """Mask images (0/255 PNG, any PIL mode) as single-channel ``(rows, cols)``."""
    return PILReader(reverse_indexing=False, converter=lambda image: image.convert("L"))

