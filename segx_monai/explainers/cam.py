"""Class activation maps (Grad-CAM, Grad-CAM++) on a chosen layer of the classifier.

Hand-written rather than ``monai.visualize.GradCAM`` (its default normaliser inverts the map and it
explains one class index for the whole batch) or captum's ``LayerGradCam`` (no Grad-CAM++): both
variants share one activation/gradient path here and differ only in the channel weights.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from monai.networks.nets import DenseNet, ResNet
from torch import Tensor, nn

from .base import Explainer, selected_scores


def default_target_layer(model: nn.Module) -> nn.Module:
    """The final feature map of known MONAI classifiers, the usual Grad-CAM target.

    - MONAI ``DenseNet`` (``DenseNet121`` ...): ``class_layers.relu``, the output of the last norm + ReLU.
      The published code used the last ``Conv2d`` module instead, a 32-channel conv inside the last
      dense layer (``features.denseblock4.denselayer16.layers.conv2`` in DenseNet121); pass that name as
      ``target_layer`` to reproduce it.
    - MONAI ``ResNet``: ``layer4``.
    """
    if isinstance(model, DenseNet):
        return model.class_layers.relu
    if isinstance(model, ResNet):
        return model.layer4
    raise ValueError(
        f"no default target layer for {type(model).__name__}; pass target_layer= as a module or a "
        "dotted module name (see model.named_modules()), e.g. 'layer4'"
    )


@contextmanager
def capture_output(layer: nn.Module) -> Iterator[list[Tensor]]:
    """Record ``layer``'s output during a forward pass in the yielded list; the hook is removed on exit."""
    outputs: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        outputs.append(output)
        # the rest of the network gets a copy, so a later in-place op (ReLU(inplace=True)) cannot
        # overwrite the recorded activation
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


class CAM(Explainer):
    """Map = ReLU(sum_k w_k A_k) over the target layer's activations A; subclasses define the weights w.

    The class score is the raw logit (before softmax/sigmoid). One forward and one backward pass per
    batch: the selected logits of all samples are summed and differentiated together, which is exact
    because samples do not interact in eval mode.
    ``target_layer``: a module of ``model``, a dotted name such as ``"class_layers.relu"``, or None for
    :func:`default_target_layer`. If the layer runs several times per forward, its last output is used.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        super().__init__(model)
        if target_layer is None:
            target_layer = default_target_layer(model)
        elif isinstance(target_layer, str):
            target_layer = model.get_submodule(target_layer)
        self.target_layer = target_layer

    @abstractmethod
    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Channel weights ``(B, K)`` from activations and score gradients ``(B, K, *s)``."""

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        with capture_output(self.target_layer) as outputs:
            # the parameters are frozen while explaining: the graph must hang on the input
            logits = self.model(inputs.requires_grad_())
        if not outputs:
            raise RuntimeError("the target layer was not called during the forward pass")
        activations = outputs[-1]
        if activations.ndim < 3:
            raise ValueError(f"the target layer must output (B, K, *spatial), got {tuple(activations.shape)}")
        (gradients,) = torch.autograd.grad(selected_scores(logits, targets).sum(), activations)
        activations = activations.detach()
        weights = self.weights(activations, gradients)
        weights = weights.view(*weights.shape, *[1] * (activations.ndim - 2))
        return torch.relu((weights * activations).sum(dim=1, keepdim=True))


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


class GradCAM(CAM):
    """Grad-CAM (Selvaraju et al. 2017): w_k = spatial mean of d(logit)/dA_k."""

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=_spatial_dims(gradients))


class GradCAMpp(CAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form with an exponential score S = exp(logit).

    alpha = g^2 / (2 g^2 + sum_ij A * g^3) with g = d(logit)/dA (alpha = 0 where the denominator is 0),
    w_k = sum_ij alpha * ReLU(g). The factor exp(logit) of dS/dA is a positive per-sample constant
    that cancels in alpha and in the min-max normalisation, so it is left out.
    """

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        dims = _spatial_dims(gradients)
        grads2 = gradients.pow(2)
        denominator = 2 * grads2 + activations.sum(dim=dims, keepdim=True) * grads2 * gradients
        alpha = torch.where(denominator != 0, grads2 / denominator, 0.0)
        return (alpha * torch.relu(gradients)).sum(dim=dims)
