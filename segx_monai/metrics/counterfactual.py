"""Counterfactual explanations (COIN, Shvetsov et al., 2024) as plain batched functions: the target the generator aims
at, its training losses, the difference map and weak segmentation it yields, and how valid and realistic its
counterfactuals are. Images ``(B, C, *spatial)``, maps and masks ``(B, 1, *spatial)``, per-sample results ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils_morphological_ops import dilate, erode
from torch import Tensor

from segx_monai.core.maps import per_sample
from segx_monai.core.segu import iou

NORMAL = "normal"  # the multi-label target: no finding at all


def target_posterior(class_names: Sequence[str], target: str, multi_label: bool) -> Tensor:
    """The classifier output ``(K,)`` a counterfactual should get: every finding absent (``target`` "normal") for a
    multi-label classifier, the one-hot ``target`` class for a single-label one."""
    names = list(class_names)
    if multi_label:
        if target != NORMAL:
            raise ValueError(f"counterfactual_target {target!r}: a multi-label classifier's counterfactual target is {NORMAL!r} (no finding).")
        return torch.zeros(len(names))
    if target not in names:
        raise ValueError(f"counterfactual_target {target!r}: expected one of the classes {names}.")
    return F.one_hot(torch.tensor(names.index(target)), len(names)).float()


def is_target(labels: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` True where a sample's label already is the target: no finding (multi-hot ``(B, K)`` labels against an
    all-zero target) or the target class (labels as class indices ``(B,)`` / ``(B, 1)`` or one-hot ``(B, K)``)."""
    labels = labels.reshape(len(labels), -1)
    if not target.any():
        return ~labels.bool().any(dim=1)
    classes = labels.argmax(dim=1) if labels.shape[1] > 1 else labels[:, 0].long()
    return classes == int(target.argmax())


def consistency_kl(logits: Tensor, target: Tensor, multi_label: bool) -> Tensor:
    """KL(target || classifier posterior), mean over the batch: per finding Bernoulli KLs summed (multi-label, sigmoid)
    or the categorical KL (single-label, softmax). ``target`` ``(K,)`` or ``(B, K)`` of probabilities."""
    target = target.to(logits).expand_as(logits)
    if multi_label:
        entropy = F.binary_cross_entropy(target, target, reduction="none")  # 0 for a 0/1 target
        kl = F.binary_cross_entropy_with_logits(logits, target, reduction="none") - entropy
    else:
        kl = F.kl_div(F.log_softmax(logits, dim=1), target, reduction="none")
    return kl.sum(dim=1).mean()


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation: the sum of absolute differences between neighbouring pixels, mean over the batch."""
    total = images.new_zeros(())
    for dim in range(2, images.ndim):
        total = total + images.diff(dim=dim).abs().sum()
    return total / images.shape[0]


def difference_map(images: Tensor, counterfactuals: Tensor, scale: float | Sequence[float] = 1.0) -> Tensor:
    """COIN's map ``|X - X_cf|`` averaged over channels ``(B, 1, *spatial)``, in pixel units: ``scale`` is the
    normalisation's standard deviation per channel, so a map of 1 is a pixel turned from black to white."""
    scale = torch.as_tensor(scale, dtype=images.dtype, device=images.device).reshape((1, -1) + (1,) * (images.ndim - 2))
    return ((images - counterfactuals).abs() * scale).mean(dim=1, keepdim=True)


def weak_segmentation(maps: Tensor, threshold: float = 0.25, opening: int = 0) -> Tensor:
    """``maps > threshold`` as a boolean batch; ``opening`` > 0 removes specks narrower than a ``2*opening+1`` square
    (a binary opening by MONAI's morphological ops)."""
    masks = maps > threshold
    if opening > 0:
        size = 2 * opening + 1
        masks = dilate(erode(masks.float(), size, pad_value=1.0), size, pad_value=0.0) > 0.5
    return masks


def restrict_to_region(masks: Tensor, regions: Tensor) -> Tensor:
    """Weak segmentations ``masks`` within the clinical ``regions`` (boolean batches), as SegX restricts a map; a
    sample whose region is empty keeps its whole mask, as SegX keeps the raw map."""
    empty = ~regions.flatten(1).any(dim=1)
    return masks.bool() & (regions.bool() | per_sample(empty, regions))


def segmentation_iou(masks: Tensor, gt: Tensor) -> Tensor:
    """IoU of each weak segmentation with its ground truth, ``(B,)``; NaN where the ground truth is empty."""
    return iou(masks, gt)


def weak_segmentation_ious(
    maps: Tensor, regions: Tensor, gt: Tensor, threshold: float = 0.25, opening: int = 0,
) -> tuple[Tensor, Tensor]:
    """IoU ``(B,)`` with ``gt`` of the weak segmentation of ``maps`` (``weak_segmentation``) as it is (raw) and
    restricted to the clinical ``regions`` (SegX, ``restrict_to_region``); NaN where the ground truth is empty."""
    masks = weak_segmentation(maps, threshold, opening)
    return segmentation_iou(masks, gt), segmentation_iou(restrict_to_region(masks, regions), gt)


def target_probability(probs: Tensor, target: Tensor, classes: Tensor | None = None) -> Tensor:
    """``(B,)`` the probability of the target outcome: for a target of no finding, ``1 - p`` of each sample's
    explained finding ``classes``; for a target class, its probability."""
    if not target.any():
        if classes is None:
            raise ValueError("classes (the explained findings) are needed for a target of no finding.")
        return 1 - probs.gather(1, classes.long()[:, None]).squeeze(1)
    return probs[:, int(target.argmax())]


def counterfactual_validity(before: Tensor, after: Tensor, confidence: float = 0.8, tau: float = 0.8) -> tuple[float, int]:
    """COIN's counterfactual validity: among the confidently abnormal samples (target probability ``before`` at most
    ``1 - confidence``), the share whose target probability rises by more than ``tau`` on the counterfactual
    (``after``). Returns (share, number of confident samples); the share is NaN when there are none."""
    confident = before <= 1 - confidence
    n = int(confident.sum())
    if n == 0:
        return float("nan"), 0
    return float(((after - before)[confident] > tau).float().mean()), n


def frechet_distance(real: Tensor | np.ndarray, generated: Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (the FID formula, in any feature
    space): ``|mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``; each set needs two samples or more.

    With the centred sets R, G, ``Tr (S_r S_g)^(1/2)`` is the sum of the singular values of ``R G^T`` over
    ``sqrt((N_r - 1)(N_g - 1))`` (the nonzero eigenvalues of ``R^T R G^T G`` are those of ``(R G^T)(R G^T)^T``): exact
    for the singular covariances of fewer samples than features, and an ``(N_r, N_g)`` SVD instead of a ``(D, D)``
    matrix square root (seconds at D = 1024)."""
    real, generated = (np.asarray(torch.as_tensor(x).detach().double().cpu()) for x in (real, generated))
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {real.shape} and {generated.shape}.")
    if len(real) < 2 or len(generated) < 2:
        return float("nan")
    centred_r, centred_g = real - real.mean(0), generated - generated.mean(0)
    scale_r, scale_g = len(real) - 1, len(generated) - 1
    root_trace = np.linalg.svd(centred_r @ centred_g.T, compute_uv=False).sum() / np.sqrt(scale_r * scale_g)
    mean_term = ((real.mean(0) - generated.mean(0)) ** 2).sum()
    return float(mean_term + (centred_r ** 2).sum() / scale_r + (centred_g ** 2).sum() / scale_g - 2 * root_trace)
