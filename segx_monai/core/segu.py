"""SegU: certainty of a prediction from how well its explanation matches the predicted clinical region (METHOD.md §3).

The overlap helpers here (``iou``, ``threshold_curve_iou``, ``top_fraction_iou``, ``threshold_curve_area``,
``relevance_mass``) are the formulas shared with the interpretability metrics of ``segx_monai.metrics.localization``,
which apply them to a ground-truth mask instead of the predicted one. Tensors are batched channel-first
``(B, 1, *spatial)``. cIoU and cAUITC are the paper's scores; the top fraction q covers at most q of the image, so
cIoU <= q / (region share of the image) whatever the map. Precision, relevance mass and rank accuracy do not depend
on the region's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.metrics import compute_iou

from segx_monai.core.maps import minmax_normalize, top_fraction_mask
from segx_monai.core.segx import align_map_to_mask


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two binary batches, ``(B,)``; NaN where ``target`` is empty (IoU with no region: undefined).

    Non-zero values count as inside. This is MONAI's ``compute_iou`` with ``ignore_empty=True``.
    """
    return compute_iou(pred.bool().float(), target.bool().float(), ignore_empty=True)[:, 0]


def threshold_curve_iou(maps: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """IoU of 1[maps >= t] with the masks for each t of the ``(T,)`` thresholds: ``(B, T)``, NaN rows for empty masks.

    Each sample is sorted once and all thresholds are located with ``torch.searchsorted``: memory stays O(pixels)
    rather than the O(T x pixels) of broadcasting every threshold (101 x 1024² x B booleans).
    """
    values = align_map_to_mask(maps, masks).flatten(1)
    sorted_values, order = values.sort(dim=1)
    inside_sorted = masks.flatten(1).bool().gather(1, order)
    inside_among_lowest = F.pad(inside_sorted.cumsum(dim=1), (1, 0))  # [:, i]: mask pixels among the i lowest values
    grid = thresholds.to(values).expand(values.shape[0], -1).contiguous()
    first_at_or_above = torch.searchsorted(sorted_values, grid)
    n_inside = inside_among_lowest[:, -1:]
    n_selected = values.shape[1] - first_at_or_above
    n_both = n_inside - inside_among_lowest.gather(1, first_at_or_above)
    curve = n_both / (n_selected + n_inside - n_both)
    return curve.where(n_inside > 0, float("nan"))


def top_fraction_iou(maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05) -> torch.Tensor:
    """IoU of each map's top fraction ``q`` (``top_fraction_mask``) with the mask, ``(B,)``; NaN for an empty mask."""
    maps = align_map_to_mask(maps, masks)
    return iou(top_fraction_mask(maps, q), masks)


def threshold_curve_area(maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 101) -> torch.Tensor:
    """Area under IoU(1[E_n >= t], M) over t in [0, 1], ``(B,)``; NaN where the mask is empty.

    E_n is the map min-max normalised per sample (``minmax_normalize``). The integral is the trapezoid rule on the
    fixed grid ``linspace(0, 1, n_thresholds)`` (default 101 points, step 0.01), with t = 0 selecting every pixel
    and t = 1 the maximum. A constant map has E_n = 0, so only t = 0 selects pixels.
    """
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be at least 2, got {n_thresholds}.")
    maps = align_map_to_mask(maps, masks)
    thresholds = torch.linspace(0, 1, n_thresholds, device=maps.device, dtype=maps.dtype)
    curve = threshold_curve_iou(minmax_normalize(maps), masks, thresholds)
    return torch.trapezoid(curve, thresholds.to(curve.dtype), dim=1)


def compute_ciou(maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05) -> torch.Tensor:
    """SegU cIoU, ``(B,)``: IoU of the raw map's top fraction ``q`` with the predicted clinical mask.

    Always defined, since it flags predictions: an empty predicted mask gives 0, whether or not the map selects
    pixels (a constant map selects none), as the segmentation then lends no support to the explanation.
    """
    return top_fraction_iou(maps, masks, q).nan_to_num(nan=0.0)


def compute_cauitc(maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 101) -> torch.Tensor:
    """SegU cAUITC, ``(B,)``: area under the IoU-threshold curve of the raw map against the predicted mask.

    Grid and normalisation as in ``threshold_curve_area``; an empty predicted mask gives 0, as for ``compute_ciou``.
    """
    return threshold_curve_area(maps, masks, n_thresholds).nan_to_num(nan=0.0)


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Relevance mass (Arras et al. 2022): share of the map's positive relevance inside the mask, Σ E⁺·M / Σ E⁺,
    ``(B,)``.

    NaN where the mask is empty, and where the map has no positive value (no relevance to share).
    """
    maps = align_map_to_mask(maps, masks)
    relevance = maps.flatten(1).clamp(min=0)
    total = relevance.sum(dim=1)
    inside = (relevance * masks.flatten(1).bool()).sum(dim=1)
    mass = (inside / total).where(total > 0, float("nan"))
    return mass.where(masks.flatten(1).bool().any(dim=1), float("nan"))


def compute_cprecision(maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05) -> torch.Tensor:
    """SegU precision, ``(B,)``: share of the raw map's top fraction ``q`` (``top_fraction_mask``) inside the mask.

    |T_q ∩ M| / |T_q| (METHOD.md §8); 0 for an empty mask or an empty T_q (a flat map), as for ``compute_ciou``.
    """
    maps = align_map_to_mask(maps, masks)
    top = top_fraction_mask(maps, q).flatten(1)
    n_inside = (top & masks.flatten(1).bool()).sum(dim=1)
    return (n_inside / top.sum(dim=1).clamp(min=1)).to(maps.dtype)


def compute_crelevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """SegU relevance mass, ``(B,)``: ``relevance_mass`` of the raw map in the mask; 0 where that is undefined."""
    return relevance_mass(maps, masks).nan_to_num(nan=0.0)


def compute_crank_accuracy(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """SegU rank accuracy (Arras et al. 2022), ``(B,)``: share of the raw map's |M| highest pixels inside the mask M.

    Pixels tied with the (|M| + 1)-th highest value are left out, as in ``top_fraction_mask``, so a flat map scores 0;
    an empty mask gives 0, as for ``compute_ciou``.
    """
    values = align_map_to_mask(maps, masks).flatten(1)
    inside = masks.flatten(1).bool()
    size = inside.sum(dim=1, keepdim=True)
    descending = F.pad(values.sort(dim=1, descending=True).values, (0, 1), value=float("-inf"))
    top = values > descending.gather(1, size)  # above the (|M| + 1)-th highest value (-inf when M is every pixel)
    return ((top & inside).sum(dim=1) / size[:, 0].clamp(min=1)).to(values.dtype)
