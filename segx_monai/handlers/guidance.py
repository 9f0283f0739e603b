"""Segmentation-guided training: a SupervisedTrainer handler adding the explanation's mass outside the region to the loss."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import Tensor, nn

from segx_monai.core.guidance import METHODS, gradcam_maps, input_gradient_maps, outside_mass, true_class_scores
from segx_monai.explainers.cam import default_target_layer
from segx_monai.networks.segmenters import region_probability

REGION_SOURCES = ("ground_truth", "segmenter")


class ExplanationGuidance:
    """Adds ``weight`` x the mean share of each image's explanation of its true class outside its clinical region
    (grown by ``margin`` pixels) to the trainer's loss, between the loss and the backward pass (``LOSS_COMPLETED``).

    ``method``: ``input_gradient`` (|d logit / d input|) or ``gradcam`` (Grad-CAM of ``target_layer``: a module,
    a dotted name, or None for the final feature map), both differentiable, so the backward pass moves the evidence.
    The region is the batch's ``region_key`` mask (``ground_truth``, augmented with the image) or the frozen
    ``segmenter``'s prediction (probability >= ``region_threshold``), computed on the trainer's own input.
    The term's value is ``engine.state.output["guidance"]`` for the loggers. Multi-label images without a positive
    class are left out (no class to explain), and so are images whose region or explanation is empty.
    """

    def __init__(
        self,
        network: nn.Module,
        method: str,
        weight: float,
        region_source: str = "ground_truth",
        margin: int = 0,
        region_key: str = "mask",
        segmenter: nn.Module | None = None,
        region_threshold: float = 0.5,
        target_layer: nn.Module | str | None = None,
    ) -> None:
        if method not in METHODS[1:]:
            raise ValueError(f"guidance: expected one of {', '.join(METHODS[1:])} where guidance is trained, got {method!r}.")
        if region_source not in REGION_SOURCES:
            raise ValueError(f"guidance_region: expected one of {', '.join(REGION_SOURCES)}, got {region_source!r}.")
        if region_source == "segmenter" and segmenter is None:
            raise ValueError(
                "guidance_region: segmenter needs the segmenter network (in the bundles: compose configs/guide_by_segmenter.yaml "
                "after train_classifier.yaml)."
            )
        if not weight >= 0:
            raise ValueError(f"guidance_weight: expected a number >= 0, got {weight!r}.")
        if not isinstance(margin, int) or margin < 0:
            raise ValueError(f"guidance_margin: expected a whole number of pixels >= 0, got {margin!r}.")
        self.method, self.weight, self.region_source, self.margin = method, float(weight), region_source, margin
        self.region_key, self.segmenter, self.region_threshold = region_key, segmenter, region_threshold
        self.layer = None
        if method == "gradcam":
            network = getattr(network, "module", network)  # a DistributedDataParallel model's own module
            self.layer = default_target_layer(network) if target_layer is None else (
                network.get_submodule(target_layer) if isinstance(target_layer, str) else target_layer
            )
        self._activations: list[Tensor] = []
        self._hook = None

    def attach(self, engine: Engine) -> None:
        if self.segmenter is not None and self.region_source == "segmenter":
            self.segmenter.requires_grad_(False)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start_iteration)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._remove_hook)
        engine.add_event_handler(Events.COMPLETED, self._remove_hook)

    def _start_iteration(self, engine: Engine) -> None:
        """Input gradients need an input in the graph; Grad-CAM records the layer's output of this forward pass."""
        if self.method == "input_gradient":
            engine.state.batch[Keys.IMAGE].requires_grad_(True)
        else:
            self._remove_hook(engine)
            self._hook = self.layer.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        self._activations.append(output)
        return output.clone()  # a later in-place op (ReLU(inplace=True)) must not overwrite the recorded activation

    def _remove_hook(self, engine: Engine | None = None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._activations = []

    def regions(self, engine: Engine, inputs: Tensor) -> Tensor:
        """Boolean clinical regions ``(B, 1, *spatial)`` of the batch, on the inputs' grid and device."""
        if self.region_source == "segmenter":
            return region_probability(self.segmenter, inputs.detach()) >= self.region_threshold
        batch = engine.state.batch
        if self.region_key not in batch:
            raise KeyError(
                f"guidance_region: ground_truth needs each training image's region mask under {self.region_key!r}; the batch "
                f"has {sorted(batch)} (load it with the training preprocessing, or use guidance_region: segmenter)."
            )
        return batch[self.region_key].to(inputs.device) > 0.5

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        inputs = output[Keys.IMAGE]
        scores, has_class = true_class_scores(output[Keys.PRED], output[Keys.LABEL])
        if self.method == "input_gradient":
            maps = input_gradient_maps(scores, inputs)
        else:
            if not self._activations:
                raise RuntimeError(f"guidance: gradcam's layer {self.layer} was not called in the training forward pass.")
            maps = gradcam_maps(scores, self._activations[-1])
        self._remove_hook(engine)
        penalty = outside_mass(maps.float(), self.regions(engine, inputs), self.margin)
        term = (penalty * has_class).sum() / has_class.sum().clamp(min=1)
        output[Keys.LOSS] = output[Keys.LOSS] + self.weight * term
        output["guidance"] = term.detach()
