"""Classifier networks of the bundles (MONAI's DenseNet121, ResNet-50, EfficientNet-B0, and a PatchNet of any of them),
with pretrained weights from a local file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from monai.networks.nets import DenseNet121, EfficientNetBN, resnet50
from monai.networks.utils import copy_model_state

from .patchnet import PatchNet

logger = logging.getLogger(__name__)

# torchvision's DenseNet keys ("denselayer1.norm1.weight") sit one level deeper in MONAI ("denselayer1.layers.norm1.weight")
_TORCHVISION_DENSE_KEY = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12]\..*)$")


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict, or one under ``"model"``/``"state_dict"`` as checkpoints keep it."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}.")
    return {_TORCHVISION_DENSE_KEY.sub(r"\1.layers.\2", k.removeprefix("module.")): v for k, v in state.items()}


def load_pretrained(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Copy every weight of ``path`` whose name and shape match ``network`` (the class head of another task is skipped).

    A PatchNet takes a file of its own (names under ``backbone.``) or of its backbone alone, such as DenseNet121's."""
    state = _state_dict_from_file(Path(path))
    target = network
    if isinstance(network, PatchNet) and not any(k.startswith("backbone.") for k in state):
        target = network.backbone
    _, updated, unchanged = copy_model_state(target, state, inplace=True)
    if not updated:
        raise ValueError(f"{path}: no weight matches the network by name and shape; is it for {type(target).__name__}?")
    logger.info("Loaded %d tensors from %s; %d left at their initial values: %s", len(updated), path, len(unchanged), unchanged[:8])
    return network


def build_classifier(
    name: str = "densenet121",
    in_channels: int = 3,
    num_classes: int = 7,
    spatial_dims: int = 2,
    pretrained: bool | str = False,
    patch_backbone: str = "densenet121",
    patch_grid: int = 8,
) -> torch.nn.Module:
    """A ``densenet121``, ``resnet50``, ``efficientnet-b0`` or ``patchnet`` classifier; ``pretrained`` is a local weights
    file, or True for MONAI's own download (densenet121, resnet50; efficientnet-b0 takes a file with MONAI's names only).

    ``patchnet``: a :class:`PatchNet` on a ``patch_grid`` x ``patch_grid`` grid whose shared patch classifier is
    ``patch_backbone`` (any other name here, same channels and classes); ``pretrained`` then goes to the backbone."""
    builders = {
        "densenet121": lambda download: DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, pretrained=download),
        "resnet50": lambda download: resnet50(pretrained=download, spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes),
        "efficientnet-b0": lambda download: EfficientNetBN("efficientnet-b0", pretrained=download, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes),
    }
    if name not in (*builders, "patchnet"):
        raise ValueError(f"unknown classifier {name!r}; expected one of {sorted([*builders, 'patchnet'])}.")
    backbone = patch_backbone if name == "patchnet" else name
    if backbone not in builders:
        raise ValueError(f"unknown patch_backbone {patch_backbone!r} for the patchnet; expected one of {sorted(builders)}.")
    if name == "patchnet" and spatial_dims != 2:
        raise ValueError(f"classifier patchnet is 2D; got spatial_dims={spatial_dims}.")
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false"):  # `--pretrained true` arrives as text
        raise ValueError(f"pretrained={pretrained!r} is text, not a weights file; on the command line write --pretrained {pretrained.title()}")
    if pretrained is True and backbone == "efficientnet-b0":
        raise ValueError("pretrained=True: efficientnet-b0 is not downloaded; pass pretrained=<path to a weights file with MONAI's EfficientNetBN names>.")
    try:
        network = builders[backbone](pretrained is True)
    except OSError as e:  # URLError and socket errors are OSErrors
        raise RuntimeError(f"could not download pretrained {backbone} weights ({e}); offline, pass pretrained=<path to a weights file>.") from e
    if name == "patchnet":
        network = PatchNet(network, grid=patch_grid)
    return load_pretrained(network, pretrained) if pretrained and pretrained is not True else network
