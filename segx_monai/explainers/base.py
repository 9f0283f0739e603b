"""Common interface of the explainers: targets, model-state safety, resizing and normalisation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from segx_monai.core.maps import minmax_normalize, resize_maps

Targets = int | Sequence[int] | Tensor | None


@contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode with frozen parameters and gradients enabled; restore it on exit.

    Hand-written because ``monai.networks.utils.eval_mode`` disables gradients and restores only the
    top-level ``training`` flag (a submodule frozen in eval mode would come back in train mode).
    Freezing the parameters keeps ``param.grad`` untouched and skips weight gradients.
    """
    modes = [(module, module.training) for module in model.modules()]
    flags = [(param, param.requires_grad) for param in model.parameters()]
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in flags:
            param.requires_grad_(requires_grad)


def as_targets(targets: Targets, batch_size: int, device: torch.device) -> Tensor | None:
    """Turn ``None``/int/sequence/tensor class selections into a LongTensor ``(B,)`` (``None`` stays)."""
    if targets is None:
        return None
    targets = torch.as_tensor(targets, device=device)
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.ndim == 0:
        targets = targets.expand(batch_size)
    if targets.shape != (batch_size,):
        raise ValueError(f"targets must have shape ({batch_size},), got {tuple(targets.shape)}")
    return targets.long()


def selected_scores(logits: Tensor, targets: Tensor | None) -> Tensor:
    """Each sample's raw logit ``(B,)`` for its target class (the argmax class when ``targets`` is None)."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits of shape (B, K), got {tuple(logits.shape)}")
    if targets is None:
        targets = logits.argmax(dim=1)
    elif targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got {targets.tolist()}")
    return logits.gather(1, targets[:, None]).squeeze(1)


def predicted_classes(model: nn.Module, inputs: Tensor) -> Tensor:
    """Argmax class of the model's output per sample (one forward pass without gradients)."""
    with torch.no_grad():
        return model(inputs).argmax(dim=1)


class Explainer(ABC):
    """Saliency maps ``(B, 1, *spatial)`` in [0, 1] for a classifier's chosen class, per sample.

    Calling an explainer runs the model in eval mode and leaves it exactly as found (modes, parameters,
    ``requires_grad``, ``.grad``, hooks), even when an exception is raised; the input is not modified.
    A new method only implements :meth:`attribute`.
    """

    min_max = True  # False: attribute() returns maps on an absolute [0, 1] scale, which __call__ keeps

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def extras(self) -> dict[str, Tensor]:
        """Tensors the last call computed beside its maps, one per explained sample (a counterfactual explainer's
        images), by name; none for most explainers."""
        return {}

    @abstractmethod
    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        """Non-negative raw maps ``(B, 1, *s)`` at any resolution for ``targets`` (argmax when None).

        Runs inside :func:`explaining`; ``inputs`` is a private copy the method may use freely.
        """

    def __call__(self, inputs: Tensor, targets: Targets = None) -> Tensor:
        """Explain ``inputs`` ``(B, C, *spatial)`` for ``targets``: None = predicted class, an int = that
        class for every sample, a ``(B,)`` tensor = one class per sample. Returns maps at the input size,
        on the input's device, min-max normalised per sample (most important region at 1) unless the explainer's
        maps have an absolute scale (``min_max`` False)."""
        spatial = tuple(inputs.shape[2:])
        if inputs.shape[0] == 0:
            return inputs.new_zeros((0, 1, *spatial))
        with explaining(self.model):
            # plain tensor copy: MONAI MetaTensor bookkeeping is not wanted inside autograd/captum
            x = inputs.detach().as_subclass(Tensor).clone()
            maps = self.attribute(x, as_targets(targets, x.shape[0], x.device))
        maps = resize_maps(maps.detach(), spatial)
        return minmax_normalize(maps) if self.min_max else maps


class InputAttributionExplainer(Explainer):
    """Explainer built on per-input-element attributions ``(B, C, *spatial)``, reduced over channels.

    Subclasses implement :meth:`attribute_inputs`; the default reduction is the channel mean of
    ``|attribution|`` (the published SHAP maps).
    """

    @abstractmethod
    def attribute_inputs(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Attributions with the shape of ``inputs`` for the given per-sample ``targets``."""

    def reduce(self, attributions: Tensor) -> Tensor:
        """Collapse the channel axis into one non-negative map ``(B, 1, *spatial)``."""
        return attributions.abs().mean(dim=1, keepdim=True)

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        if targets is None:
            targets = predicted_classes(self.model, inputs)
        return self.reduce(self.attribute_inputs(inputs, targets))


def explain_positive_classes(
    explainer: Explainer, inputs: Tensor, positive: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One map per predicted-positive class of a multi-label model.

    ``positive`` is a ``(B, K)`` boolean matrix; returns ``(maps, sample_idx, class_idx)`` where
    ``maps[n]`` explains class ``class_idx[n]`` of sample ``sample_idx[n]`` (all pairs in one batch).
    """
    if positive.ndim != 2 or positive.shape[0] != inputs.shape[0]:
        raise ValueError(f"positive must have shape ({inputs.shape[0]}, K), got {tuple(positive.shape)}")
    sample_idx, class_idx = positive.to(device=inputs.device, dtype=torch.bool).nonzero(as_tuple=True)
    return explainer(inputs[sample_idx], class_idx), sample_idx, class_idx
