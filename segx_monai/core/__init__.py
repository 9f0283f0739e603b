"""Core maths: SegX (explanation restricted to the clinical region) and SegU (certainty from their overlap)."""

from segx_monai.core.maps import minmax_normalize, per_sample_quantile, resize_maps, top_fraction_mask
from segx_monai.core.segu import (
    compute_cauitc,
    compute_ciou,
    compute_cprecision,
    compute_crank_accuracy,
    compute_crelevance_mass,
    iou,
    relevance_mass,
    threshold_curve_area,
    threshold_curve_iou,
    top_fraction_iou,
)
from segx_monai.core.segx import (
    VARIANTS,
    SegXResult,
    align_map_to_mask,
    dilate_disk,
    segx,
)

__all__ = [
    "VARIANTS",
    "SegXResult",
    "align_map_to_mask",
    "compute_cauitc",
    "compute_ciou",
    "compute_cprecision",
    "compute_crank_accuracy",
    "compute_crelevance_mass",
    "dilate_disk",
    "iou",
    "minmax_normalize",
    "per_sample_quantile",
    "relevance_mass",
    "resize_maps",
    "segx",
    "threshold_curve_area",
    "threshold_curve_iou",
    "top_fraction_iou",
    "top_fraction_mask",
]
