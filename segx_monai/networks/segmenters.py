"""Segmenter network of the bundles: MONAI's BasicUNet, sized once here so training and interpretation agree."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import BasicUNet

DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)


def build_segmenter(in_channels: int = 3, out_channels: int = 2, features: Sequence[int] = DEFAULT_FEATURES, spatial_dims: int = 2) -> BasicUNet:
    """A 2D BasicUNet (background + region); half MONAI's default widths, enough for one region at 64-256 px."""
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=tuple(features))
