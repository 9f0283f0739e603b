"""Per-sample outputs of an evaluator written as they come: a CSV row per sample and PNG masks; nothing accumulates."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image

logger = logging.getLogger(__name__)

ROW_KEY = "row"


def sample_rows(engine: Engine) -> list[dict]:
    """The per-sample column dicts of the current iteration (created on first use), one per decollated output item."""
    return [item.setdefault(ROW_KEY, {}) for item in engine.state.output]


def sample_ids(engine: Engine, id_key: str = "image_id") -> list[str]:
    """The ids of the current iteration's samples, from the decollated batch."""
    return [str(item[id_key]) for item in engine.state.batch]


def resize_to(array: torch.Tensor, size: Sequence[int] | None, mode: str = "bilinear") -> torch.Tensor:
    """``(C, *spatial)`` resampled to ``size`` (the image's original size) when given and different."""
    if size is None or tuple(array.shape[1:]) == tuple(int(s) for s in size):
        return array
    return torch.nn.functional.interpolate(array[None].float(), size=[int(s) for s in size], mode=mode, align_corners=False)[0]


class PredictionColumns:
    """Fills each sample's row with the prediction: class name, its probability, every class probability, and,
    when the label is known, the true class and whether the prediction is correct (single-label, softmax outputs)."""

    def __init__(self, class_names: Sequence[str], pred_key: str = "pred", label_key: str = "label") -> None:
        self.class_names, self.pred_key, self.label_key = list(class_names), pred_key, label_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for item, batch_item, row in zip(engine.state.output, engine.state.batch, sample_rows(engine)):
            probs = item[self.pred_key].detach().float().cpu()
            predicted = int(probs.argmax())
            row.update(prediction=self.class_names[predicted], probability=float(probs[predicted]))
            label = batch_item.get(self.label_key)
            if label is not None and torch.as_tensor(label).numel() == 1:
                row.update(label=self.class_names[int(label)], correct=int(int(label) == predicted))
            row.update({f"p_{name}": float(p) for name, p in zip(self.class_names, probs)})


class SampleTableWriter:
    """Streams one CSV row per sample (id, then the columns the other handlers put in the sample's row)."""

    def __init__(self, path: str | Path, id_key: str = "image_id") -> None:
        self.path, self.id_key = Path(path), id_key
        self._file = self._writer = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.close)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.close)

    def __call__(self, engine: Engine) -> None:
        for sample_id, row in zip(sample_ids(engine, self.id_key), sample_rows(engine)):
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w", newline="")
                self._writer = csv.DictWriter(self._file, fieldnames=[self.id_key, *row], restval="", extrasaction="ignore")
                self._writer.writeheader()
            self._writer.writerow({self.id_key: sample_id, **row})

    def close(self, engine: Engine | None = None, *_) -> None:
        if self._file is not None:
            self._file.close()
            logger.info("Wrote %s", self.path)
        self._file = self._writer = None


class MaskWriter:
    """Writes ``<id><suffix>.png`` (0/255) from a probability key, resampled to the image's original size."""

    def __init__(
        self, output_dir: str | Path, key: str = "region_prob", threshold: float = 0.5, suffix: str = "_mask",
        id_key: str = "image_id", size_key: str = "original_size",
    ) -> None:
        self.output_dir, self.key, self.threshold, self.suffix = Path(output_dir), key, threshold, suffix
        self.id_key, self.size_key = id_key, size_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for item, batch_item in zip(engine.state.output, engine.state.batch):
            prob = resize_to(item[self.key].detach().cpu(), batch_item.get(self.size_key))
            mask = (prob[0] > self.threshold).numpy().astype(np.uint8) * 255
            Image.fromarray(mask).save(self.output_dir / f"{batch_item[self.id_key]}{self.suffix}.png")
