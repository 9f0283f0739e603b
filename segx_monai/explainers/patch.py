"""A PatchNet's own explanation: its patch logits painted onto their patches."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segx_monai.core.maps import minmax_normalize, per_sample
from segx_monai.networks.patchnet import PatchNet

from .base import Explainer, selected_scores

MODES = ("raw", "scaled")
ACTIVATIONS = ("sigmoid", "softmax")


def paint_patches(patch_maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Each value of ``patch_maps`` ``(B, C, gh, gw)`` repeated over its patch of an image of ``size`` (blocky, exact)."""
    grid_h, grid_w = patch_maps.shape[2:]
    return patch_maps.repeat_interleave(size[0] // grid_h, dim=2).repeat_interleave(size[1] // grid_w, dim=3)


class PatchLogits(Explainer):
    """The target class's patch logits of a :class:`PatchNet`, painted onto their patches at the input size.

    ``mode="raw"``: the painted logits, min-max normalised per image like every explainer's map. ``"scaled"``: that
    map times the target class's image probability (``activation``: ``"sigmoid"`` of its image logit for multi-label
    models, ``"softmax"`` over the image logits for single-label ones), so the map's maximum is the prediction's
    probability and a map of an unlikely class stays faint.
    ``shifts`` = s > 1 smooths the blocks: the image is rolled by k/s of a patch (k = 0 .. s-1, rounded down to whole
    pixels) along each axis, each of the s*s maps rolled back and their mean taken. Circular roll rather than
    reflect padding because it keeps the image size, hence the patch size the backbone was trained on, and gives
    every pixel exactly s*s maps; the cost is that the patches straddling the seam join the opposite borders.
    One forward pass per shift and batch, no gradients. The image probability and the argmax class (``targets`` None)
    come from the unshifted image.
    """

    def __init__(self, model: nn.Module, mode: str = "raw", activation: str = "sigmoid", shifts: int = 1) -> None:
        if not isinstance(model, PatchNet):
            raise ValueError(
                f"explainer_name patch_logits explains a PatchNet (classifier_name: patchnet); got a {type(model).__name__}."
            )
        if mode not in MODES:
            raise ValueError(f"patch_logits mode must be one of {MODES}, got {mode!r}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"patch_logits activation must be one of {ACTIVATIONS}, got {activation!r}.")
        if shifts < 1:
            raise ValueError(f"patch_logits shifts must be >= 1 (1 = no shift), got {shifts}.")
        super().__init__(model)
        self.mode = mode
        self.activation = activation
        self.shifts = shifts
        self.min_max = mode == "raw"

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        """The shift-averaged painted patch logits ``(B, 1, H, W)``: as they are (raw; ``__call__`` min-max normalises
        them), or min-max normalised here and times the image probability (scaled), whose absolute scale is kept."""
        maps, probability = self._painted(inputs, targets)
        if self.mode == "raw":
            return maps
        maps = minmax_normalize(maps.float())
        return maps * per_sample(probability.float(), maps)

    def _painted(self, inputs: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        """The shift-averaged painted patch logits of ``targets`` and the target class's image probability ``(B,)``."""
        size = (inputs.shape[2], inputs.shape[3])
        patch_h, patch_w = size[0] // self.model.grid_h, size[1] // self.model.grid_w
        total = inputs.new_zeros((inputs.shape[0], 1, *size))
        probability = inputs.new_zeros(inputs.shape[0])
        with torch.no_grad():
            for k_h in range(self.shifts):
                for k_w in range(self.shifts):
                    shift = (k_h * patch_h // self.shifts, k_w * patch_w // self.shifts)
                    patch_logits = self.model.patch_logits(torch.roll(inputs, shift, dims=(2, 3)))
                    if k_h == k_w == 0:
                        logits = patch_logits.mean(dim=(2, 3))  # the image logits, as PatchNet.forward
                        targets = logits.argmax(dim=1) if targets is None else targets
                        probabilities = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)
                        probability = selected_scores(probabilities, targets)  # checks the targets' range
                    chosen = patch_logits.gather(1, targets[:, None, None, None].expand(-1, 1, *patch_logits.shape[2:]))
                    total += torch.roll(paint_patches(chosen, size), (-shift[0], -shift[1]), dims=(2, 3))
        return total / self.shifts**2, probability
