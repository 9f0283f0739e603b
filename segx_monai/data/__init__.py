"""Data sets in their real layouts, saved splits, readers and the built-in synthetic sets."""

from segx_monai.data import chestx_det, datalist, fingerprint, ham10000, readers, skipping, splits
