"""Run the segmenter inside a classifier's evaluator, on the very batch the classifier saw."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.inferers import Inferer, SimpleInferer

from segx_monai.handlers.contract import OutputKeys
from segx_monai.handlers.writers import IterationHandler
from segx_monai.networks.segmenters import region_probability


class RegionSegmentation(IterationHandler):
    """Adds the clinical-region probability ``(1, *spatial)`` of each sample to ``engine.state.output[i][output_key]``.

    The segmenter runs in eval mode (batch-norm on running statistics) under ``no_grad``, batched, on the items'
    ``image_key`` tensors, i.e. the classifier's own preprocessed input, so map and mask share one grid.
    """

    def __init__(
        self,
        segmenter: torch.nn.Module,
        region_channel: int = 1,
        output_key: str = OutputKeys.REGION_PROB,
        image_key: str = OutputKeys.IMAGE,
        inferer: Inferer | None = None,
    ) -> None:
        self.segmenter, self.region_channel, self.output_key, self.image_key = segmenter, region_channel, output_key, image_key
        self.inferer = inferer or SimpleInferer()
        self.requires = (image_key,)

    def __call__(self, engine: Engine) -> None:
        items = self.output(engine)
        images = torch.stack([item[self.image_key] for item in items])
        region = region_probability(self.segmenter, images, self.region_channel, self.inferer)
        for item, prob in zip(items, region):
            item[self.output_key] = prob
