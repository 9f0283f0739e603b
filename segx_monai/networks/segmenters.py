"""Segmenter network of the bundles: MONAI's BasicUNet, sized once here so training and interpretation agree."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer, SimpleInferer
from monai.networks.nets import BasicUNet
from monai.networks.utils import eval_mode
from torch import Tensor, nn

DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)


def build_segmenter(in_channels: int = 3, out_channels: int = 2, features: Sequence[int] = DEFAULT_FEATURES, spatial_dims: int = 2) -> BasicUNet:
    """A 2D BasicUNet (background + region); half MONAI's default widths, enough for one region at 64-256 px."""
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=tuple(features))


def region_probability(segmenter: nn.Module, images: Tensor, channel: int = 1, inferer: Inferer | None = None) -> Tensor:
    """The region's probability ``(B, 1, *spatial)`` from a segmenter run in eval mode without gradients: the softmax
    channel ``channel`` of a multi-channel output, or the sigmoid of a one-channel output."""
    with eval_mode(segmenter), torch.no_grad():
        logits = (inferer or SimpleInferer())(images, segmenter)
    if logits.shape[1] == 1:
        return logits.sigmoid()
    return logits.softmax(1)[:, channel : channel + 1]
