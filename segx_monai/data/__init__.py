"""Data sets in their real layouts, saved splits, readers and the built-in synthetic sets."""

from segx_monai.data import chestx_det, datalist, ham10000, readers, splits
