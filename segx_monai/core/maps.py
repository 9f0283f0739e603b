"""Per-sample map helpers shared by the explainers, SegX/SegU, the metrics and the handlers: resampling to a grid,
min-max normalisation, quantiles and the top-fraction mask. Maps are batched channel-first ``(B, C, *spatial)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def check_batched(tensor: torch.Tensor, name: str) -> None:
    """Raise unless ``tensor`` is a single-channel batch with 2 or 3 spatial dims."""
    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (4, 5) or tensor.shape[1] != 1:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a (B, 1, H, W) or (B, 1, D, H, W) tensor, got {shape}.")


def check_fraction(q: float) -> None:
    """Raise unless ``q`` lies strictly between 0 and 1."""
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}.")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(B,)`` values to broadcast against the batch ``like``."""
    return values.view(-1, *[1] * (like.ndim - 1))


def resize_maps(maps: torch.Tensor, size: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """``(B, C, *spatial)`` maps resampled to the grid ``size`` (linear, bilinear or trilinear,
    ``align_corners=False``, as float); returned unchanged when ``size`` is None or already their size."""
    if size is None or tuple(maps.shape[2:]) == tuple(int(s) for s in size):
        return maps
    maps = maps if maps.is_floating_point() else maps.float()
    return F.interpolate(maps, size=[int(s) for s in size], mode=_INTERPOLATION[maps.ndim - 2], align_corners=False)


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Rescale each sample linearly to [0, 1]; a constant map becomes all zeros, as it says nothing about location."""
    values = maps.flatten(1)
    low = values.amin(dim=1)
    span = values.amax(dim=1) - low
    return (maps - per_sample(low, maps)) / per_sample(span.where(span > 0, 1.0), maps)


def per_sample_quantile(maps: torch.Tensor, p: float) -> torch.Tensor:
    """Quantile ``p`` of each sample over all its pixels, ``(B,)``, with numpy's default ``"linear"`` method.

    With the n values sorted as x_0 <= ... <= x_{n-1} and h = (n - 1) p, the quantile is
    x_floor(h) + (h - floor(h)) (x_floor(h)+1 - x_floor(h)). Built on ``torch.kthvalue`` because ``torch.quantile``
    refuses inputs of more than 2**24 elements, which 3D volumes exceed.
    """
    check_batched(maps, "maps")
    if not 0 <= p <= 1:
        raise ValueError(f"p must lie in [0, 1], got {p}.")
    values = maps.flatten(1) if maps.is_floating_point() else maps.flatten(1).float()
    n_pixels = values.shape[1]
    position = (n_pixels - 1) * p
    below_index = math.floor(position)
    above_index = min(below_index + 1, n_pixels - 1)
    # both order statistics from one partial sort of the shorter tail (half the time of two kthvalue calls at q = 5%)
    if n_pixels - below_index <= above_index + 1:
        tail = values.topk(n_pixels - below_index, dim=1).values  # descending: ascending index i sits at n - 1 - i
        below, above = tail[:, n_pixels - 1 - below_index], tail[:, n_pixels - 1 - above_index]
    else:
        head = values.topk(above_index + 1, dim=1, largest=False).values  # ascending
        below, above = head[:, below_index], head[:, above_index]
    return torch.lerp(below, above, position - below_index)


def top_fraction_mask(maps: torch.Tensor, q: float = 0.05) -> torch.Tensor:
    """Boolean mask of each sample's most relevant pixels, ``1[E > quantile(E, 1 - q)]`` (see ``per_sample_quantile``).

    The comparison is strict, so tied values at the quantile are left out: a constant or all-zero map, which
    says nothing about location, gives an empty mask. One exception: when the quantile is the map's maximum (the top
    q lies inside one tied value, as in a blocky PatchNet map whose top patch covers more than q) the pixels of that
    value are kept, more than q of the image, rather than none.
    """
    check_fraction(q)
    threshold = per_sample(per_sample_quantile(maps, 1 - q), maps)
    strict = maps > threshold
    values = maps.flatten(1)
    tied_top = ~strict.flatten(1).any(dim=1) & (values.amax(dim=1) > values.amin(dim=1))
    return strict | (per_sample(tied_top, maps) & (maps >= threshold))
