"""Ignite/MONAI engine handlers: checkpoint resume, SegX/SegU and localization metrics."""

from segx_monai.handlers import checkpoint, localization, region, savers, segx, thresholds, writers
