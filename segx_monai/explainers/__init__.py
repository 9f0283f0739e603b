"""Saliency maps for MONAI classifiers, one per (sample, class), normalised to [0, 1] at the input size.

All explainers share :class:`Explainer`'s call ``explainer(inputs, targets=None) -> (B, 1, *spatial)``
and leave the model exactly as found.
"""

from .attribution import (
    GradientShap,
    IntegratedGradients,
    Occlusion,
    build_baselines,
    load_baselines,
    save_baselines,
)
from .base import Explainer, InputAttributionExplainer, explain_positive_classes
from .cam import CAM, EigenCAM, GradCAM, GradCAMpp, GradientCAM, default_target_layer, principal_projection
from .counterfactual import COUNTERFACTUAL, Counterfactual
from .patch import PatchLogits, paint_patches
from .registry import EXPLAINERS, explainer_class, get_explainer

__all__ = [
    "CAM",
    "COUNTERFACTUAL",
    "Counterfactual",
    "EXPLAINERS",
    "EigenCAM",
    "Explainer",
    "GradCAM",
    "GradCAMpp",
    "GradientCAM",
    "GradientShap",
    "InputAttributionExplainer",
    "IntegratedGradients",
    "Occlusion",
    "PatchLogits",
    "build_baselines",
    "default_target_layer",
    "explain_positive_classes",
    "explainer_class",
    "get_explainer",
    "load_baselines",
    "paint_patches",
    "principal_projection",
    "save_baselines",
]
