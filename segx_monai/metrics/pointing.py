"""cheXlocalize-style localisation (Saporta et al., 2022): each map is resampled to the image, min-max normalised per
image and thresholded into a segmentation, scored by IoU against the finding's ground-truth mask at a threshold tuned
on the validation fold, beside the pointing game (``compute_hit``); and the per-finding summary over true positives
(TP), false positives (FP) and false negatives (FN).

Maps ``(B, 1, *spatial)`` at any size, masks ``(B, 1, *spatial)`` at the image's size; per-sample results ``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from segx_monai.core.maps import check_batched, minmax_normalize, per_sample, resize_maps
from segx_monai.core.segu import iou, threshold_curve_iou
from segx_monai.metrics.localization import compute_hit

PAIRS_PER_SORT = 64  # the tuning's mean IoU sorts this many maps at a time: memory stays O(64 maps), whatever the fold


def threshold_maps(
    maps: torch.Tensor, size: Sequence[int], threshold: float | torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Boolean segmentations ``(B, 1, *size)``: the maps resampled to ``size`` (bilinear, ``resize_maps``), each
    min-max normalised to [0, 1] when ``normalize``, then ``>= threshold`` (a number, or one per map ``(B,)``)."""
    check_batched(maps, "maps")
    maps = resize_maps(maps if maps.is_floating_point() else maps.float(), size)
    maps = minmax_normalize(maps) if normalize else maps
    threshold = torch.as_tensor(threshold, dtype=maps.dtype, device=maps.device)
    return maps >= (per_sample(threshold, maps) if threshold.ndim else threshold)


def localize(
    maps: torch.Tensor, masks: torch.Tensor, threshold: float | torch.Tensor, normalize: bool = True
) -> dict[str, torch.Tensor]:
    """Pointing game and IoU of explained pairs, ``{"hit": (B,), "iou": (B,)}``.

    ``hit`` is ``compute_hit`` (the map's maximum in the mask; NaN for an empty mask). ``iou`` is the IoU of
    ``threshold_maps(maps, masks' size, threshold, normalize)`` with the mask, and 0 where the mask is empty: the map
    of a finding absent from the image (a false positive) localises nothing, as cheXlocalize counts it.
    """
    check_batched(masks, "masks")
    selected = threshold_maps(maps, masks.shape[2:], threshold, normalize)
    return {"hit": compute_hit(maps, masks), "iou": iou(selected, masks).nan_to_num(nan=0.0)}


def mean_iou_curve(
    maps: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor, normalize: bool = True
) -> torch.Tensor:
    """Mean over the pairs of ``localize``'s IoU at each of the ``(T,)`` thresholds, ``(T,)`` float64; the maps are
    sorted ``PAIRS_PER_SORT`` at a time (``threshold_curve_iou``), in float32 whatever their storage."""
    check_batched(maps, "maps")
    check_batched(masks, "masks")
    if not len(maps) or len(maps) != len(masks):
        raise ValueError(f"maps and masks must be matching non-empty batches, got {len(maps)} and {len(masks)}.")
    total = torch.zeros(len(thresholds), dtype=torch.float64)
    for chunk, gt in zip(maps.split(PAIRS_PER_SORT), masks.split(PAIRS_PER_SORT)):
        chunk = resize_maps(chunk.float(), gt.shape[2:])
        chunk = minmax_normalize(chunk) if normalize else chunk
        total += threshold_curve_iou(chunk, gt, thresholds.float()).nan_to_num(nan=0.0).double().sum(dim=0).cpu()
    return total / len(maps)


def tune_localization_threshold(
    maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 1e-3, normalize: bool = True
) -> tuple[float, float]:
    """The threshold in [0, 1] maximising the mean IoU of ``localize`` over the given pairs, and that mean IoU.

    The mean IoU against the threshold is a step function with a step at every pixel value, and not unimodal (each
    pair peaks where its own mask is best covered): golden-section search and scipy's bounded Brent method
    (``minimize_scalar``) assume one peak and pick a side blindly where two probes tie on a plateau, and miss a
    narrow best step (the golden test: Brent in the bracket of a 21-point scan's best point returns 0.875 where 1.0
    lies 0.01 wide beside it). Every point of a grid of spacing ``tolerance`` is scored instead, which costs one sort
    per map like a single probe would (``mean_iou_curve``), and finds every step at least ``tolerance`` wide. The
    middle of the first run of best grid points is returned, the threshold farthest from that step's edges.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}.")
    grid = torch.linspace(0, 1, math.ceil(1 / tolerance) + 1, dtype=torch.float64)
    curve = mean_iou_curve(maps, masks, grid, normalize)
    best = curve.max()
    first = int(curve.argmax())
    ends = (curve[first:] < best).nonzero()
    last = first + (int(ends[0, 0]) if len(ends) else len(curve) - first) - 1
    return float(grid[(first + last) // 2]), float(best)


def chexlocalize_summary(iou: torch.Tensor, hit: torch.Tensor, n_fp: int, n_fn: int) -> dict[str, float | int]:
    """One finding's cheXlocalize numbers from the IoU and hit ``(n_tp,)`` of its true-positive pairs.

    TP: an explained (predicted) finding present in the ground truth; FP: an explained finding whose ground-truth mask
    is empty; FN: a finding of the ground truth that was not predicted, so not explained; true negatives are left out.
    ``miou_all`` is the mean IoU over TP + FP + FN, FP and FN pairs counting 0; ``miou_tp`` over TP only;
    ``hit_rate`` the pointing game over TP (the pairs with a non-empty ground truth). NaN where the count is 0.
    """
    iou, hit = torch.as_tensor(iou, dtype=torch.float64), torch.as_tensor(hit, dtype=torch.float64)
    n_tp, n_all = len(iou), len(iou) + n_fp + n_fn
    return {
        "n_tp": n_tp, "n_fp": n_fp, "n_fn": n_fn,
        "hit_rate": float(hit.mean()) if n_tp else math.nan,
        "miou_all": float(iou.sum() / n_all) if n_all else math.nan,
        "miou_tp": float(iou.mean()) if n_tp else math.nan,
    }
