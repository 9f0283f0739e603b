"""GradientSHAP's reference images, drawn from the training fold when a classifier is trained and saved beside it."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ignite.distributed as idist
from ignite.engine import Engine, Events

from segx_monai.data.skipping import CheckedDataset
from segx_monai.explainers.attribution import build_baselines, save_baselines


class BaselineSaver:
    """When training starts, draw ``n`` of ``items`` (the training fold; seeded), load them with ``transform`` (no
    augmentation) and save them at ``path`` (rank 0), so that inference and interpretation explain against one saved
    set and need no training data. Only the drawn items are read."""

    def __init__(self, path: str | os.PathLike, items: Sequence[dict], transform: Callable, n: int = 50, seed: int = 0) -> None:
        self.path, self.items, self.transform, self.n, self.seed = path, items, transform, n, seed

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            dataset = CheckedDataset(self.items, self.transform)  # a failing image: an error naming its file
            save_baselines(build_baselines(dataset, n=min(self.n, len(dataset)), seed=self.seed), self.path)
