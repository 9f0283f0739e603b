"""Class activation maps (Grad-CAM, Grad-CAM++, Eigen-CAM) on a chosen layer of the classifier.

Hand-written rather than ``monai.visualize.GradCAM`` (its default normaliser inverts the map and it
explains one class index for the whole batch) or captum's ``LayerGradCam`` (no Grad-CAM++): the
gradient variants share one activation/gradient path here and differ only in the channel weights.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from monai.networks.nets import DenseNet, ResNet
from torch import Tensor, nn

from segx_monai.networks.patchnet import PatchNet

from .base import Explainer, selected_scores


def default_target_layer(model: nn.Module) -> nn.Module:
    """The final feature map of known MONAI classifiers, the usual Grad-CAM target.

    - MONAI ``DenseNet`` (``DenseNet121`` ...): ``class_layers.relu``, the output of the last norm + ReLU.
      The published code used the last ``Conv2d`` module instead, a 32-channel conv inside the last
      dense layer (``features.denseblock4.denselayer16.layers.conv2`` in DenseNet121); pass that name as
      ``target_layer`` to reproduce it.
    - MONAI ``ResNet``: ``layer4``.

    A :class:`PatchNet` has none: its backbone sees the patches folded into the batch, so no layer holds a map of the
    whole image; its own explainer is ``patch_logits``.
    """
    if isinstance(model, PatchNet):
        raise ValueError(
            "classifier_name: patchnet has no Grad-CAM layer: its backbone sees each patch alone (folded into the "
            "batch), so a CAM needs a layer of the whole image, which a PatchNet lacks; use explainer_name: patch_logits."
        )
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
    """A map from the activations A ``(B, K, *s)`` of a chosen layer of the classifier.

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

    def layer_activations(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The logits ``(B, classes)`` and the target layer's activations ``(B, K, *s)`` of one forward pass."""
        with capture_output(self.target_layer) as outputs:
            logits = self.model(inputs)
        if not outputs:
            raise RuntimeError("the target layer was not called during the forward pass")
        activations = outputs[-1]
        if activations.ndim < 3 or activations.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"the target layer must output (B, K, *spatial) with B = {inputs.shape[0]} images, got "
                f"{tuple(activations.shape)} (e.g. a layer inside a PatchNet's backbone: it sees the patches, not the images)"
            )
        return logits, activations


class GradientCAM(CAM):
    """Map = ReLU(sum_k w_k A_k) over the target layer's activations A; subclasses define the weights w.

    The class score is the raw logit (before softmax/sigmoid). One forward and one backward pass per
    batch: the selected logits of all samples are summed and differentiated together, which is exact
    because samples do not interact in eval mode.
    """

    @abstractmethod
    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """Channel weights ``(B, K)`` from activations and score gradients ``(B, K, *s)``."""

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        # the parameters are frozen while explaining: the graph must hang on the input
        logits, activations = self.layer_activations(inputs.requires_grad_())
        (gradients,) = torch.autograd.grad(selected_scores(logits, targets).sum(), activations)
        activations = activations.detach()
        weights = self.weights(activations, gradients)
        weights = weights.view(*weights.shape, *[1] * (activations.ndim - 2))
        return torch.relu((weights * activations).sum(dim=1, keepdim=True))


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.ndim))


class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al. 2017): w_k = spatial mean of d(logit)/dA_k."""

    def weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=_spatial_dims(gradients))


class GradCAMpp(GradientCAM):
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


def principal_projection(activations: Tensor) -> Tensor:
    """Each sample's activations ``(B, K, *s)`` projected on their first principal component, ``(B, 1, *s)``.

    Per sample, the ``(h*w, K)`` matrix of positions x channels is centred over positions (as pytorch-grad-cam does:
    uncentred, the first component mostly measures the mean activation) and its first right singular vector v gives
    the projection ``(A - mean) v``; v's sign, which the SVD leaves open, is chosen so that the projection correlates
    positively with the channel sum of A (ties keep the SVD's sign). Computed in float32.
    """
    positions = activations.detach().float().flatten(2).transpose(1, 2)  # (B, h*w, K)
    centred = positions - positions.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None]).squeeze(2)  # (B, h*w)
    channel_sum = positions.sum(dim=2)
    agreement = (projection * (channel_sum - channel_sum.mean(dim=1, keepdim=True))).sum(dim=1, keepdim=True)
    projection = torch.where(agreement < 0, -projection, projection)
    return projection.view(activations.shape[0], 1, *activations.shape[2:])


class EigenCAM(CAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): ReLU of :func:`principal_projection` of the target layer's activations.

    Class-agnostic: ``targets`` are ignored, every class of an image gets the same map. One forward pass without
    gradients.
    """

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        with torch.no_grad():
            _, activations = self.layer_activations(inputs)
        return torch.relu(principal_projection(activations))
