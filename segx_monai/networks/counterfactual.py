"""COIN's networks (Shvetsov et al., 2024): a perturbation generator that turns an image into its counterfactual for a
target class, and the patch discriminator that judges its realism."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet, PatchDiscriminator
from torch import Tensor, nn

DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)


class PerturbationGenerator(nn.Module):
    """``X_cf = clamp(X + G([X, c]), low, high)``: a BasicUNet (skip connections at every level) predicts an additive
    perturbation of the image, conditioned on the target posterior ``c`` ``(B, K)`` broadcast as K constant channels.

    ``low`` / ``high`` are the image range per channel in the network's input units (the normalised 0 and 1 of the
    pixels), so a counterfactual is always an image the classifier could have been given. A zero-initialised last
    layer starts training from the identity (X_cf = X), which a normal image should stay.
    """

    def __init__(
        self, in_channels: int, num_classes: int, low: float | Sequence[float], high: float | Sequence[float],
        features: Sequence[int] = DEFAULT_FEATURES, spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.unet = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels + num_classes, out_channels=in_channels, features=tuple(features))
        nn.init.zeros_(self.unet.final_conv.weight)
        nn.init.zeros_(self.unet.final_conv.bias)
        shape = (1, -1) + (1,) * spatial_dims
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(shape).expand(1, in_channels, *shape[2:]).clone())
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(shape).expand(1, in_channels, *shape[2:]).clone())

    def forward(self, images: Tensor, condition: Tensor) -> Tensor:
        """The counterfactuals ``(B, C, *spatial)`` of ``images`` for the target posteriors ``condition`` ``(B, K)``."""
        if condition.shape != (images.shape[0], self.num_classes):
            raise ValueError(f"condition must have shape ({images.shape[0]}, {self.num_classes}), got {tuple(condition.shape)}")
        channels = condition.to(images.dtype)[(...,) + (None,) * (images.ndim - 2)].expand(-1, -1, *images.shape[2:])
        perturbation = self.unet(torch.cat([images, channels], dim=1))
        return torch.maximum(torch.minimum(images + perturbation, self.high), self.low)


def build_generator(
    in_channels: int, num_classes: int, low: float | Sequence[float], high: float | Sequence[float],
    features: Sequence[int] = DEFAULT_FEATURES,
) -> PerturbationGenerator:
    """The bundles' 2D generator; half MONAI's default BasicUNet widths, as the segmenter."""
    return PerturbationGenerator(in_channels, num_classes, low, high, features)


def build_discriminator(in_channels: int, channels: int = 32, num_layers: int = 3) -> PatchDiscriminator:
    """MONAI's 2D PatchDiscriminator (PatchGAN): one real/fake logit per receptive field; its last output is the
    logit map that ``monai.losses.PatchAdversarialLoss`` scores."""
    return PatchDiscriminator(spatial_dims=2, channels=channels, in_channels=in_channels, out_channels=1, num_layers_d=num_layers)
