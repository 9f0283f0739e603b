"""Data sets in their real layouts, saved splits, readers and the built-in synthetic sets."""

from segx_monai.data import datalist, ham10000, readers, splits
