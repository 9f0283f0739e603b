"""Explainers by name, for code and MONAI bundle configs."""

from __future__ import annotations

from typing import Any

from torch import nn

from .attribution import GradientShap, IntegratedGradients, Occlusion
from .base import Explainer
from .cam import EigenCAM, GradCAM, GradCAMpp
from .counterfactual import Counterfactual
from .patch import PatchLogits

EXPLAINERS: dict[str, type[Explainer]] = {
    "gradcam": GradCAM,
    "gradcampp": GradCAMpp,
    "eigencam": EigenCAM,
    "gradient_shap": GradientShap,
    "integrated_gradients": IntegratedGradients,
    "occlusion": Occlusion,
    "patch_logits": PatchLogits,
    "counterfactual": Counterfactual,
}


def explainer_class(name: str) -> type[Explainer]:
    """The explainer class registered as ``name`` (any case); a bundle's ``initialize`` calls it to refuse a wrong
    ``explainer_name`` before any work, listing the valid names."""
    try:
        return EXPLAINERS[str(name).lower()]
    except KeyError:
        raise ValueError(f"explainer_name {name!r}: unknown explainer; valid names: {', '.join(EXPLAINERS)}.") from None


def get_explainer(name: str, model: nn.Module, **kwargs: Any) -> Explainer:
    """Build the explainer registered as ``name`` for ``model``; ``kwargs`` go to its constructor.

    In a bundle config: ``{"_target_": "segx_monai.explainers.get_explainer", "name": "gradcam",
    "model": "@network", "target_layer": "class_layers.relu"}``.
    """
    return explainer_class(name)(model, **kwargs)
