"""A self-explaining patch classifier (MedicalPatchNet, Wienholt et al. 2025): one shared backbone classifies every
patch of a grid independently and the image logits are the mean of the patch logits, so the patch logits are the
explanation."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class PatchNet(nn.Module):
    """``backbone`` (any ``(N, C, h, w) -> (N, K)`` classifier) applied to the ``grid`` (an int or ``(gh, gw)``) of
    non-overlapping patches of a 2D image; the patches are folded into the batch, so one forward pass classifies all.

    ``patch_logits(x)`` gives ``(B, K, gh, gw)``; ``forward(x)`` their mean ``(B, K)``. H and W must be divisible by
    the grid. A patch's logits depend on its own pixels only (in eval mode: batch norm in training mode mixes the
    batch, as it does across images).
    """

    def __init__(self, backbone: nn.Module, grid: int | Sequence[int] = 8) -> None:
        super().__init__()
        grid_h, grid_w = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if grid_h < 1 or grid_w < 1:
            raise ValueError(f"PatchNet grid must be positive, got {grid!r}.")
        self.backbone = backbone
        self.grid_h = int(grid_h)
        self.grid_w = int(grid_w)

    def patch_logits(self, x: Tensor) -> Tensor:
        """The backbone's logits of each patch of ``x`` ``(B, C, H, W)``, laid out on the grid: ``(B, K, gh, gw)``."""
        if x.dim() != 4:
            raise ValueError(f"PatchNet takes 2D images (B, C, H, W), got {x.dim()} dimensions.")
        batch, channels, height, width = x.shape
        if height % self.grid_h != 0 or width % self.grid_w != 0:
            raise ValueError(
                f"PatchNet: image size {height}x{width} is not divisible by the {self.grid_h}x{self.grid_w} patch grid "
                "(the bundles' image_size and patch_grid)."
            )
        patch_h, patch_w = height // self.grid_h, width // self.grid_w
        # (B, C, gh, ph, gw, pw) -> (B, gh, gw, C, ph, pw) -> (B*gh*gw, C, ph, pw): the one copy the fold needs
        patches = x.reshape(batch, channels, self.grid_h, patch_h, self.grid_w, patch_w).permute(0, 2, 4, 1, 3, 5)
        logits = self.backbone(patches.reshape(batch * self.grid_h * self.grid_w, channels, patch_h, patch_w))
        return logits.reshape(batch, self.grid_h, self.grid_w, -1).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Image logits ``(B, K)``: the mean of the patch logits."""
        return self.patch_logits(x).mean(dim=(2, 3))

