"""SegU: certainty of a prediction from how well its explanation matches the predicted clinical region (METHOD.md §3).

The overlap helpers here (``iou``, ``threshold_curve_iou``, ``top_fraction_iou``, ``threshold_curve_area``,
``relevance_mass``) are the formulas shared with the interpretability metrics of ``segx_monai.metrics.localization``,
which apply them to a ground-truth mask instead of the predicted one. Tensors are batched channel-first
``(B, 1, *spatial)``. cIoU and cAUITC are the paper's scores; the top fraction q covers at most q of the image, so
cIoU <= q / (region share of the image) whatever the map. Precision, relevance mass and rank accuracy do not depend
on the region's size.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import compute_iou

from segx_monai.core.maps import minmax_normalize, top_fraction_mask
from segx_monai.core.segx import align_map_to_mask


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two binary batches, ``(B,)``; NaN where ``target`` is empty (IoU with no region: undefined).

    Non-zero values count as inside. This is MONAI's ``compute_iou`` with ``ignore_empty=True``.
    """
    return compute_iou(pred.bool().float(), target.bool().float(), ignore_empty=True)[:, 0]


def threshold_levels(maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """How many of the ascending ``(T,)`` thresholds each pixel reaches (value >= t), ``(B, pixels)`` int64.

    The per-map half of ``threshold_curve_iou``, done once for all the masks a map is scored against: a binary search
    per pixel (``torch.bucketize``) rather than a sort of each map.
    """
    if thresholds.numel() > 1 and bool((thresholds[1:] < thresholds[:-1]).any()):
        raise ValueError(f"thresholds must be ascending, got {thresholds.tolist()}.")
    return torch.bucketize(maps.flatten(1), thresholds.to(maps), right=True)


def level_curve_iou(levels: torch.Tensor, masks: torch.Tensor, n_thresholds: int) -> torch.Tensor:
    """IoU with the masks of the pixels that reach each threshold, from their ``threshold_levels``: ``(B, T)``, NaN rows
    for empty masks.

    One histogram per sample of the levels inside and outside the mask (a single ``torch.bincount``); the counts that
    reach threshold j are the histogram's sums above j. Memory stays O(pixels + B T), whatever the number of thresholds.
    """
    inside = masks.flatten(1).bool()
    bins, n_maps = n_thresholds + 1, levels.shape[0]
    offsets = torch.arange(0, 2 * bins * n_maps, 2 * bins, device=levels.device)[:, None]
    index = inside.long().mul_(bins).add_(levels).add_(offsets)  # each pixel's bin: (sample, inside the mask, level)
    histogram = torch.bincount(index.flatten(), minlength=2 * bins * n_maps).view(n_maps, 2, bins)
    reaching = histogram.flip(2).cumsum(2).flip(2)[:, :, 1:]  # [b, inside?, j]: pixels whose level exceeds j
    n_both, n_selected = reaching[:, 1], reaching.sum(dim=1)
    n_inside = inside.sum(dim=1, keepdim=True)
    curve = n_both / (n_selected + n_inside - n_both)
    return curve.where(n_inside > 0, float("nan"))


def threshold_curve_iou(maps: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """IoU of 1[maps >= t] with the masks for each t of the ascending ``(T,)`` thresholds: ``(B, T)``, NaN rows for
    empty masks (``threshold_levels``, then ``level_curve_iou``).

    Memory stays O(pixels) rather than the O(T x pixels) of broadcasting every threshold (101 x 1024² x B booleans).
    """
    levels = threshold_levels(align_map_to_mask(maps, masks), thresholds)
    return level_curve_iou(levels, masks, len(thresholds))


def threshold_grid(n_thresholds: int, maps: torch.Tensor) -> torch.Tensor:
    """The thresholds of AUITC and its curves, ``linspace(0, 1, n_thresholds)`` in the maps' dtype and device."""
    if n_thresholds < 2:
        raise ValueError(f"n_thresholds must be at least 2, got {n_thresholds}.")
    return torch.linspace(0, 1, n_thresholds, device=maps.device, dtype=maps.dtype)


def normalized_levels(maps: torch.Tensor, n_thresholds: int) -> torch.Tensor:
    """``threshold_levels`` of each map min-max normalised (``minmax_normalize``) on ``threshold_grid``: the per-map
    half of AUITC and its curve, shared by every mask the maps are scored against."""
    return threshold_levels(minmax_normalize(maps), threshold_grid(n_thresholds, maps))


def top_fraction_iou(
    maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05, top: torch.Tensor | None = None
) -> torch.Tensor:
    """IoU of each map's top fraction ``q`` (``top_fraction_mask``) with the mask, ``(B,)``; NaN for an empty mask.

    ``top``: that top fraction on the masks' grid when already at hand (the maps are then unused).
    """
    return iou(top_fraction_mask(align_map_to_mask(maps, masks), q) if top is None else top, masks)


def threshold_curve_and_area(
    maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 101, levels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The IoU-threshold curve ``(B, n_thresholds)`` that ``threshold_curve_area`` integrates, and that area ``(B,)``.

    ``levels``: the maps' ``normalized_levels`` on the masks' grid when already at hand (computed here otherwise).
    """
    maps = align_map_to_mask(maps, masks)
    curve = level_curve_iou(normalized_levels(maps, n_thresholds) if levels is None else levels, masks, n_thresholds)
    return curve, torch.trapezoid(curve, threshold_grid(n_thresholds, maps).to(curve.dtype), dim=1)


def threshold_curve_area(
    maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 101, levels: torch.Tensor | None = None
) -> torch.Tensor:
    """Area under IoU(1[E_n >= t], M) over t in [0, 1], ``(B,)``; NaN where the mask is empty.

    E_n is the map min-max normalised per sample (``minmax_normalize``). The integral is the trapezoid rule on the
    fixed grid ``threshold_grid`` = ``linspace(0, 1, n_thresholds)`` (default 101 points, step 0.01), with t = 0
    selecting every pixel and t = 1 the maximum. A constant map has E_n = 0, so only t = 0 selects pixels.
    ``levels``: as for ``threshold_curve_and_area``.
    """
    return threshold_curve_and_area(maps, masks, n_thresholds, levels)[1]


def compute_ciou(
    maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05, top: torch.Tensor | None = None
) -> torch.Tensor:
    """SegU cIoU, ``(B,)``: IoU of the raw map's top fraction ``q`` with the predicted clinical mask.

    Always defined, since it flags predictions: an empty predicted mask gives 0, whether or not the map selects
    pixels (a constant map selects none), as the segmentation then lends no support to the explanation. ``top``: as
    for ``top_fraction_iou``.
    """
    return top_fraction_iou(maps, masks, q, top).nan_to_num(nan=0.0)


def compute_cauitc(
    maps: torch.Tensor, masks: torch.Tensor, n_thresholds: int = 101, levels: torch.Tensor | None = None
) -> torch.Tensor:
    """SegU cAUITC, ``(B,)``: area under the IoU-threshold curve of the raw map against the predicted mask.

    Grid, normalisation and ``levels`` as in ``threshold_curve_area``; an empty predicted mask gives 0, as for
    ``compute_ciou``.
    """
    return threshold_curve_area(maps, masks, n_thresholds, levels).nan_to_num(nan=0.0)


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


def compute_cprecision(
    maps: torch.Tensor, masks: torch.Tensor, q: float = 0.05, top: torch.Tensor | None = None
) -> torch.Tensor:
    """SegU precision, ``(B,)``: share of the raw map's top fraction ``q`` (``top_fraction_mask``) inside the mask.

    |T_q ∩ M| / |T_q| (METHOD.md §8); 0 for an empty mask or an empty T_q (a flat map), as for ``compute_ciou``.
    ``top``: as for ``top_fraction_iou``.
    """
    maps = align_map_to_mask(maps, masks)
    top = (top_fraction_mask(maps, q) if top is None else top).flatten(1)
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
    size = inside.sum(dim=1)
    # the (|M| + 1)-th highest value is the (n - |M|)-th lowest (-inf when M is every pixel): one selection per map
    cut = [row.kthvalue(k).values if k else row.new_tensor(-math.inf) for row, k in zip(values, (values.shape[1] - size).tolist())]
    top = values > torch.stack(cut)[:, None] if cut else inside
    return ((top & inside).sum(dim=1) / size.clamp(min=1)).to(values.dtype)
