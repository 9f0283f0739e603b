"""Sanity checks of saliency maps (METHOD.md §9): how similar two maps are (Spearman rank correlation, SSIM), how fast
a classifier's score falls (rises) as a map's most relevant pixels are removed (revealed), and the classifier with its
weights re-initialised layer by layer from the output down.

Maps are batched channel-first ``(B, 1, *spatial)``; every function works per sample on the whole batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from monai.metrics.regression import compute_ssim_and_cs
from scipy.stats import rankdata
from torch import Tensor, nn

from segx_monai.core.maps import check_batched, minmax_normalize, resize_maps
from segx_monai.explainers.attribution import reference_images

SSIM_WINDOW = 11  # MONAI's default Gaussian window (pixels per side) and its sigma: maps need at least this size
SSIM_SIGMA = 1.5
INSERTION_BLUR_SIGMA = 5.0  # the blurred image insertion starts from, as in Petsiuk et al. 2018 (sigma in pixels)


def _check_pair(a: Tensor, b: Tensor) -> None:
    """Raise unless ``a`` and ``b`` are single-channel batches of the same shape."""
    check_batched(a, "a")
    check_batched(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the two batches of maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")


def spearman_correlation(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Spearman rank correlation of each pair of maps ``a[i]``, ``b[i]`` over their pixels (those where ``mask[i]`` is
    True, when given), ``(B,)``.

    Ties share their average rank (SegX maps are zero outside the region, so ties are the rule), and the correlation
    is Pearson's of the ranks; NaN where either map is constant over the pixels compared (its ranks do not vary).
    """
    _check_pair(a, b)
    keep = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.bool().expand_as(a)
    keep = keep.detach().flatten(1).cpu()
    values = [m.detach().flatten(1).double().cpu().where(keep, float("nan")).numpy() for m in (a, b)]
    ranks = [torch.from_numpy(rankdata(v, axis=1, nan_policy="omit")).nan_to_num() for v in values]
    n_kept = keep.sum(dim=1, keepdim=True).clamp(min=1)
    centred = [(r - r.sum(dim=1, keepdim=True) / n_kept) * keep for r in ranks]
    spread = (centred[0].square().sum(dim=1) * centred[1].square().sum(dim=1)).sqrt()
    rho = (centred[0] * centred[1]).sum(dim=1) / spread
    return rho.where(spread > 0, float("nan")).to(device=a.device, dtype=a.dtype if a.is_floating_point() else torch.float32)


def map_ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM of each pair of maps, ``(B,)``, each map min-max normalised to [0, 1] first (data range 1).

    MONAI's ``compute_ssim_and_cs`` with its default 11-pixel Gaussian window (sigma 1.5), averaged over the valid
    window positions, so each side of a map must have at least 11 pixels. A constant map normalises to all zeros
    (``minmax_normalize``): two constant maps score 1, and a constant map against a structured one scores by the
    other's luminance and contrast alone (near 0 when the other map is bright and varied).
    """
    _check_pair(a, b)
    if min(a.shape[2:]) < SSIM_WINDOW:
        raise ValueError(f"map_ssim needs maps of at least {SSIM_WINDOW} pixels per side, got {tuple(a.shape[2:])}.")
    spatial_dims = a.ndim - 2
    ssim, _ = compute_ssim_and_cs(
        minmax_normalize(a.float()), minmax_normalize(b.float()), spatial_dims=spatial_dims,
        kernel_size=[SSIM_WINDOW] * spatial_dims, kernel_sigma=[SSIM_SIGMA] * spatial_dims, data_range=1.0,
    )
    return ssim.flatten(1).mean(dim=1)


class DeletionInsertion(NamedTuple):
    """Class-score curves as the most relevant pixels are removed (deletion) or revealed (insertion), and their areas."""

    fractions: Tensor
    """``(n_steps + 1,)``: the share of pixels removed (revealed) at each point, from 0 to 1."""
    deletion: Tensor
    """``(B, n_steps + 1)``: the score with the top fraction of pixels replaced by the deletion baseline."""
    insertion: Tensor
    """``(B, n_steps + 1)``: the score of the insertion baseline with the top fraction of pixels of the image put back."""
    deletion_auc: Tensor
    """``(B,)``: area under the deletion curve over [0, 1] (trapezoid rule); lower = the map finds the evidence first."""
    insertion_auc: Tensor
    """``(B,)``: area under the insertion curve; higher = the map finds the evidence first."""


def _baseline(value: float | Tensor, images: Tensor, name: str) -> Tensor:
    """A baseline value or image batch broadcast to the images' shape."""
    value = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    try:
        return value.expand_as(images)
    except RuntimeError:
        raise ValueError(f"{name} must be a number or broadcast to the images {tuple(images.shape)}, got {tuple(value.shape)}.") from None


def pixel_ranks(maps: Tensor) -> Tensor:
    """Each pixel's rank in its map, ``(B, 1, *spatial)`` longs: 0 for the most relevant; tied pixels ranked in
    row-major (raster) order, a stable sort."""
    order = maps.flatten(1).sort(dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks.view(maps.shape)


def deletion_insertion(
    score_fn: Callable[[Tensor], Tensor], images: Tensor, maps: Tensor, n_steps: int = 16,
    deletion_baseline: float | Tensor = 0.0, insertion_baseline: float | Tensor | None = None,
) -> DeletionInsertion:
    """Deletion and insertion curves of Petsiuk et al. 2018 for ``images`` ``(B, C, *spatial)`` ranked by ``maps``.

    Pixels are ranked by the map, highest first (ties in raster order, ``pixel_ranks``; a map smaller than the image
    is resampled to it with ``resize_maps``, as SegX does); at step k = 0..n_steps the floor(k N / n_steps) top-ranked
    of the N pixels, every channel, are replaced by ``deletion_baseline`` (deletion; 0 is the dataset mean of
    normalised images) or taken from the image into ``insertion_baseline`` (insertion; None: the image blurred with a
    Gaussian of sigma ``INSERTION_BLUR_SIGMA``). ``score_fn(images) -> (B,)`` gives the explained class's probability;
    it is called once per step and curve on the whole batch.
    """
    check_batched(maps, "maps")
    if images.ndim != maps.ndim or images.shape[0] != maps.shape[0]:
        raise ValueError(f"images {tuple(images.shape)} and maps {tuple(maps.shape)} must be matching batches.")
    n_pixels = images[0, 0].numel()
    if not 1 <= n_steps <= n_pixels:
        raise ValueError(f"n_steps must lie in [1, {n_pixels}] (the pixels of an image), got {n_steps}.")
    ranks = pixel_ranks(resize_maps(maps, images.shape[2:]).to(images.device))
    removed = _baseline(deletion_baseline, images, "deletion_baseline")
    if insertion_baseline is None:
        insertion_baseline = reference_images(images, "blur", INSERTION_BLUR_SIGMA)
    hidden = _baseline(insertion_baseline, images, "insertion_baseline")
    counts = [k * n_pixels // n_steps for k in range(n_steps + 1)]
    deletion = torch.stack([score_fn(torch.where(ranks < count, removed, images)) for count in counts], dim=1)
    insertion = torch.stack([score_fn(torch.where(ranks < count, images, hidden)) for count in counts], dim=1)
    fractions = torch.tensor(counts, dtype=deletion.dtype, device=deletion.device) / n_pixels
    return DeletionInsertion(
        fractions, deletion, insertion, torch.trapezoid(deletion, fractions, dim=1), torch.trapezoid(insertion, fractions, dim=1)
    )


def cascade_layers(network: nn.Module) -> list[str]:
    """The network's parameterised blocks, output end first: the order in which the cascading randomisation test
    (Adebayo et al. 2018) re-initialises them.

    Blocks are the parameterised children of the network, looking inside plain ``nn.Sequential`` containers, in
    reverse order of registration (MONAI's networks register their modules in forward order). MONAI's DenseNet121:
    ``class_layers.out``, ``features.norm5``, ``features.denseblock4``, ``features.transition3``, ...,
    ``features.norm0``, ``features.conv0``; its ResNet-50: ``fc``, ``layer4.2``, ..., ``layer1.0``, ``bn1``, ``conv1``.
    A module that only wraps one network, like a PatchNet, is looked through: ``backbone.class_layers.out``, ...
    """

    def blocks(module: nn.Module, prefix: str) -> Iterator[str]:
        for name, child in module.named_children():
            if type(child) is nn.Sequential:
                yield from blocks(child, f"{prefix}{name}.")
            elif next(child.parameters(), None) is not None:
                yield f"{prefix}{name}"

    root, prefix = network, ""
    while not list(root.parameters(recurse=False)):  # a wrapper of one network (PatchNet's backbone): its blocks
        wrapped = [(name, child) for name, child in root.named_children() if next(child.parameters(), None) is not None]
        if len(wrapped) != 1:
            break
        prefix, root = f"{prefix}{wrapped[0][0]}.", wrapped[0][1]
    names = list(blocks(root, prefix))
    if not names:
        raise ValueError(f"{type(network).__name__} has no parameterised child module to re-initialise.")
    return names[::-1]


def reinitialize(module: nn.Module) -> None:
    """Re-initialise every parameterised submodule of ``module`` with its own ``reset_parameters()`` (PyTorch's
    default initialisation; batch norms also reset their running statistics)."""
    for name, submodule in module.named_modules():
        if hasattr(submodule, "reset_parameters"):
            submodule.reset_parameters()
        elif next(submodule.parameters(recurse=False), None) is not None:
            raise TypeError(f"cannot re-initialise {name or type(module).__name__} ({type(submodule).__name__}): it has "
                            "parameters but no reset_parameters().")


def check_layers(network: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """``layers`` as a list, checked to name submodules of ``network``; None gives ``cascade_layers(network)``."""
    if layers is None:
        return cascade_layers(network)
    known = dict(network.named_modules())
    unknown = [name for name in layers if name not in known or not name]
    if unknown or not layers:
        raise ValueError(f"layers {unknown or list(layers)} are not modules of {type(network).__name__}; e.g. {cascade_layers(network)}.")
    return list(layers)


def randomized_cascade(network: nn.Module, layers: Sequence[str] | None = None, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer, copy)`` for each of ``layers`` in order (default ``cascade_layers``): a copy of ``network``
    with that layer and every layer before it in the list re-initialised (``reinitialize``); ``network`` is untouched.

    The k-th layer is re-initialised with the global RNGs seeded inside ``torch.random.fork_rng`` with the k-th number
    drawn by a generator seeded with ``seed``, so the caller's random state is kept and each copy depends only on
    (network, layers, seed, device). Names are checked (``check_layers``) before the first copy is made.
    """
    return _cascade(network, check_layers(network, layers), seed)


def _cascade(network: nn.Module, layers: list[str], seed: int) -> Iterator[tuple[str, nn.Module]]:
    """The generator of ``randomized_cascade``, apart so that its checks run when it is called."""
    randomized = copy.deepcopy(network)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    step_seeds = torch.randint(2**62, (len(layers),), generator=torch.Generator().manual_seed(seed)).tolist()
    for name, step_seed in zip(layers, step_seeds):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed)
            reinitialize(randomized.get_submodule(name))
        yield name, copy.deepcopy(randomized)
