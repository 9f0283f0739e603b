"""SegX: restrict an explanation map to the clinical region found by a segmentation model (METHOD.md §2).

Maps, masks and probabilities are batched channel-first tensors ``(B, 1, H, W)`` or ``(B, 1, D, H, W)``; every
function works per sample, on the whole batch at once, on the inputs' device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from segx_monai.core.maps import check_batched, check_fraction, per_sample, resize_maps, top_fraction_mask

VARIANTS = ("rethreshold", "intersect")


def align_map_to_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Check that ``maps`` and ``masks`` are matching batches and return the maps (as float) on the masks' grid.

    When spatial sizes differ the *map* is resampled (bilinear in 2D, trilinear in 3D, ``align_corners=False``),
    never the mask, so the clinical region keeps its exact boundary; interpolation keeps a map >= 0.
    """
    check_batched(maps, "maps")
    check_batched(masks, "masks")
    if maps.ndim != masks.ndim or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"maps and masks must have the same batch size and number of spatial dims, "
            f"got {tuple(maps.shape)} and {tuple(masks.shape)}."
        )
    return resize_maps(maps if maps.is_floating_point() else maps.float(), masks.shape[2:])


def dilate_disk(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow boolean masks by ``radius`` pixels with a disk (a ball in 3D) structuring element.

    Hand-written because MONAI's ``dilate`` uses a square element, which reaches further along the diagonals.
    """
    check_batched(masks, "masks")
    if not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a non-negative int, got {radius!r}.")
    if radius == 0:
        return masks.bool()
    offsets = torch.arange(-radius, radius + 1, device=masks.device)
    grids = torch.meshgrid(*[offsets] * (masks.ndim - 2), indexing="ij")
    disk = (sum(grid**2 for grid in grids) <= radius**2).float()
    convolve = F.conv2d if masks.ndim == 4 else F.conv3d
    return convolve(masks.float(), disk[None, None], padding=radius) > 0.5


class SegXResult(NamedTuple):
    """Output of ``segx``: continuous and binary SegX maps, the clinical mask used, and the empty-mask flags."""

    heatmap: torch.Tensor
    """Continuous SegX map ``(B, 1, *spatial)``: the map restricted to the clinical region."""
    binary: torch.Tensor
    """Boolean SegX map ``(B, 1, *spatial)``: the most relevant pixels within the clinical region, the set whose
    IoU@q and hit the localisation metrics report for SegX (the variants differ only here)."""
    mask: torch.Tensor
    """Boolean clinical mask ``(B, 1, *spatial)``: thresholded (and dilated) segmentation."""
    empty_mask: torch.Tensor
    """Boolean ``(B,)``: True where the mask is empty and the raw map was returned instead."""


def segx(
    maps: torch.Tensor,
    seg_probs: torch.Tensor,
    variant: str = "rethreshold",
    q: float = 0.05,
    mask_threshold: float = 0.5,
    dilation: int = 0,
    soft_mask: bool = False,
    top: torch.Tensor | None = None,
) -> SegXResult:
    """Restrict explanation maps to the clinical region ``M = 1[seg_probs > mask_threshold]`` (METHOD.md §2).

    Variants (default ``"rethreshold"``, the one of the published code and figures):

    - ``"rethreshold"``: heatmap = E ⊙ M; binary = top ``q`` of the heatmap, quantile over all pixels including
      the zeros outside M, so when fewer than a fraction ``q`` of pixels are non-zero every non-zero pixel is kept.
    - ``"intersect"`` (paper Eq. 6-7): heatmap = E ⊙ M; binary = top ``q`` of the raw map ∧ M.

    ``dilation`` grows M by that many pixels with a disk; ``soft_mask`` weighs the heatmap by ``seg_probs``
    instead of M (M still decides the intersection and emptiness). A sample whose M is empty keeps its raw map
    (heatmap = E, binary = top ``q`` of E) and is flagged in ``empty_mask``. Maps are resampled to the mask grid
    when sizes differ (see ``align_map_to_mask``). ``top``: the maps' ``top_fraction_mask`` at ``q`` on the mask grid
    when already at hand.
    """
    variant = look_up_option(variant, VARIANTS)
    check_fraction(q)
    maps = align_map_to_mask(maps, seg_probs)
    mask = dilate_disk(seg_probs > mask_threshold, dilation)
    heatmap = maps * (seg_probs if soft_mask else mask).to(maps.dtype)
    raw_top = top_fraction_mask(maps, q) if top is None else top
    binary = top_fraction_mask(heatmap, q) if variant == "rethreshold" else raw_top & mask
    values = maps.flatten(1)  # a constant raw map says nothing about location: no binary map, even inside M
    binary &= per_sample(values.amax(dim=1) > values.amin(dim=1), binary)
    empty_mask = ~mask.flatten(1).any(dim=1)
    use_raw = per_sample(empty_mask, maps)
    return SegXResult(
        heatmap=torch.where(use_raw, maps, heatmap),
        binary=torch.where(use_raw, raw_top, binary),
        mask=mask,
        empty_mask=empty_mask,
    )
