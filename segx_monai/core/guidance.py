"""Explanation guidance: the share of a differentiable explanation that lies outside the clinical region, as a loss.

Training with it moves the classifier's evidence into the region, in the spirit of "right for the right reasons"
(Ross et al. 2017: input gradients penalised outside an allowed region) and ISNet (Bassi et al. 2022: background
relevance minimised). Plain batched functions: the trainer's handler (``handlers.guidance``) only wires them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segx_monai.core.segx import align_map_to_mask, dilate_disk

METHODS = ("none", "input_gradient", "gradcam")


def true_class_scores(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's score to explain, the raw logit of its true class, and whether it has one: ``(B,)``, ``(B,)`` bool.

    ``labels``: class indices ``(B,)`` or ``(B, 1)`` (single-label), or multi-hot ``(B, K)`` (multi-label: the sum of
    the positive classes' logits; an image without a positive class has nothing to explain).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}.")
    if labels.ndim == 2 and labels.shape == logits.shape and labels.shape[1] > 1:
        positive = labels > 0.5
        return (logits * positive).sum(dim=1), positive.any(dim=1)
    index = labels.reshape(-1).long()
    if index.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be (B,) class indices or (B, K) multi-hot, got {tuple(labels.shape)} for {tuple(logits.shape)} logits.")
    return logits.gather(1, index[:, None]).squeeze(1), torch.ones_like(index, dtype=torch.bool)


def input_gradient_maps(scores: Tensor, inputs: Tensor) -> Tensor:
    """|d score / d input| summed over channels, ``(B, 1, *spatial)``, kept in the graph (a loss can be taken of it).

    The scores of different images are summed before differentiating: exact when images do not interact (eval mode);
    in training, batch normalisation couples them a little through the batch statistics.
    """
    (gradients,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return gradients.abs().sum(dim=1, keepdim=True)


def gradcam_maps(scores: Tensor, activations: Tensor) -> Tensor:
    """Grad-CAM, ReLU(sum_k mean(dS/dA_k) A_k), of a layer's activations ``(B, K, *s)``, kept in the graph."""
    (gradients,) = torch.autograd.grad(scores.sum(), activations, create_graph=True)
    weights = gradients.mean(dim=tuple(range(2, gradients.ndim)), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1, keepdim=True))


def outside_mass(maps: Tensor, regions: Tensor, margin: int = 0) -> Tensor:
    """Per image, the share of the map's mass outside the region grown by ``margin`` pixels, ``(B,)`` in [0, 1].

    ``maps`` (non-negative, any spatial size: resampled to the regions' grid) and boolean ``regions``
    ``(B, 1, *spatial)``. Differentiable in ``maps``. 0 where the map has no mass or the region is empty (no evidence
    to move, or nowhere to move it).
    """
    maps = align_map_to_mask(maps, regions).clamp(min=0).flatten(1)
    allowed = dilate_disk(regions.bool(), margin).flatten(1)
    total = maps.sum(dim=1)
    outside = (maps * ~allowed).sum(dim=1)
    defined = (total > 0) & allowed.any(dim=1)
    return torch.where(defined, outside / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))
