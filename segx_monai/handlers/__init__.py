"""Ignite/MONAI engine handlers: checkpoint resume, best-model selection, SegX/SegU and localization metrics."""

from segx_monai.handlers import checkpoint, localization, model_selection, region, savers, segx, thresholds, writers
