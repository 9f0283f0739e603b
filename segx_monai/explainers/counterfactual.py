"""COIN's explanation (Shvetsov et al., 2024): what would have to change for the classifier to say the target class.

A generator trained against the frozen classifier (``train_counterfactual.yaml``) turns each image into its
counterfactual X_cf; the map is ``|X - X_cf|`` and ``map > threshold`` is a weak segmentation learnt from image-level
labels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from segx_monai.metrics.counterfactual import difference_map

from .base import Explainer, Targets, explaining

COUNTERFACTUAL = "counterfactual"  # the name of the counterfactual images among the explainer's extras


class Counterfactual(Explainer):
    """``|X - X_cf|`` averaged over channels, in pixel units (``scale``: the normalisation's standard deviation per
    channel), clipped to [0, 1] and not min-max normalised: an image the generator leaves unchanged has an all-zero map
    (nothing had to change), so thresholds such as the weak segmentation's 0.25 keep their meaning.

    The map does not depend on the explained class: the generator aims at one ``target`` posterior ``(K,)`` (no
    finding; a benign class). One generator forward per call, without gradients; generator and classifier are left as
    found. :meth:`extras` gives the counterfactual images of the last call.
    """

    min_max = False

    def __init__(self, model: nn.Module, generator: nn.Module, target: Sequence[float] | Tensor, scale: float | Sequence[float] = 1.0) -> None:
        super().__init__(model)
        self.generator = generator
        self.target = torch.as_tensor(target, dtype=torch.float32)
        self.scale = scale
        self._counterfactuals: Tensor | None = None

    def counterfactuals(self, inputs: Tensor) -> Tensor:
        """X_cf ``(B, C, *spatial)`` of ``inputs`` for the target, in the network's input units."""
        condition = self.target.to(inputs.device).expand(inputs.shape[0], -1)
        with explaining(self.generator), torch.no_grad():
            return self.generator(inputs, condition)

    def __call__(self, inputs: Tensor, targets: Targets = None) -> Tensor:
        self._counterfactuals = inputs[:0].detach().as_subclass(Tensor)  # a call without samples leaves none, not the last
        return super().__call__(inputs, targets)

    def attribute(self, inputs: Tensor, targets: Tensor | None) -> Tensor:
        self._counterfactuals = self.counterfactuals(inputs)
        return difference_map(inputs, self._counterfactuals, self.scale).clamp(0, 1)

    def extras(self) -> dict[str, Tensor]:
        return {} if self._counterfactuals is None else {COUNTERFACTUAL: self._counterfactuals}
