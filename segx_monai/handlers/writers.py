"""Per-sample outputs of an evaluator written as they come: CSV rows and PNG masks; nothing accumulates in memory.

Each decollated output item carries ``item["rows"]``: one dict of scalar columns per explained (sample, class) pair
(one row for a single-label prediction, one per predicted-positive finding for a multi-label one). The handlers
of this package fill those dicts; :class:`SampleTableWriter` streams them to CSV. ``contract`` names keys and columns.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image

from segx_monai.core.maps import resize_maps
from segx_monai.handlers.contract import Columns, OutputKeys, check_output, probability_column

logger = logging.getLogger(__name__)


def item_rows(item: dict) -> list[dict]:
    """The column dicts of one output item (one empty row until an explainer says which classes it explains)."""
    return item.setdefault(OutputKeys.ROWS, [{}])


class IterationHandler:
    """Base of the per-iteration handlers here: attaches ``__call__`` to ``ITERATION_COMPLETED``.

    ``requires`` lists the output keys it reads, made by handlers attached before it (or by the evaluator); reading
    the items through :meth:`output` or :meth:`items` checks them, so a handler list in the wrong order fails naming
    the missing key and the handler that makes it.
    """

    requires: tuple[str, ...] = ()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        raise NotImplementedError

    def output(self, engine: Engine) -> list[dict]:
        """The iteration's output items (decollated by MONAI's engines), checked to hold every key in ``requires``."""
        check_output(engine.state.output, self.requires, self)
        return engine.state.output

    def items(self, engine: Engine) -> Iterator[tuple[dict, dict]]:
        """``(batch_item, output_item)`` pairs of the current iteration, the output items checked as by :meth:`output`."""
        return zip(engine.state.batch, self.output(engine))


class PredictionColumns(IterationHandler):
    """Fills each row with the prediction: class name, its probability, every class probability, the classifier's own
    certainty (``confidence``: the maximum softmax probability; ``entropy``: the softmax's, in nats) and, when the label
    is known, the true class and whether the prediction is correct (single-label, softmax outputs)."""

    def __init__(self, class_names: Sequence[str], pred_key: str = OutputKeys.PRED, label_key: str = "label") -> None:
        self.class_names, self.pred_key, self.label_key = list(class_names), pred_key, label_key
        self.requires = (pred_key,)

    def __call__(self, engine: Engine) -> None:
        for batch_item, item in self.items(engine):
            probs = item[self.pred_key].detach().float().cpu()
            predicted = int(probs.argmax())
            columns = {Columns.PREDICTION: self.class_names[predicted], Columns.PROBABILITY: float(probs[predicted]),
                       Columns.CONFIDENCE: float(probs[predicted]),
                       Columns.ENTROPY: float(torch.distributions.Categorical(probs=probs).entropy())}
            label = batch_item.get(self.label_key)
            if label is not None and torch.as_tensor(label).numel() == 1:
                columns.update({Columns.LABEL: self.class_names[int(label)], Columns.CORRECT: int(int(label) == predicted)})
            columns.update({probability_column(name): float(p) for name, p in zip(self.class_names, probs)})
            for row in item_rows(item):
                row.update(columns)


class MultiLabelPredictionColumns(IterationHandler):
    """Fills each row of a multi-label prediction: the explained finding's probability and decision threshold, its
    certainty (``confidence``: the margin ``|p - threshold|``, comparable across findings with different thresholds;
    ``entropy``: the binary entropy of ``p``, in nats) and, when labels are known, whether the finding is really present
    (``correct``: a true, not a false, positive).

    Every class probability and the list of predicted findings go to each row too; an image with no finding above
    its threshold keeps one row with an empty ``finding``.
    """

    def __init__(self, class_names: Sequence[str], thresholds: Sequence[float], pred_key: str = OutputKeys.PRED, label_key: str = "label") -> None:
        self.class_names, self.thresholds = list(class_names), torch.as_tensor(thresholds, dtype=torch.float32)
        self.pred_key, self.label_key = pred_key, label_key
        self.requires = (pred_key,)

    def _finding_columns(self, probs: torch.Tensor, k: int | None) -> dict[str, float]:
        """Probability, threshold, confidence and entropy of finding ``k`` (all NaN for the row of no finding)."""
        if k is None:
            return dict.fromkeys((Columns.PROBABILITY, Columns.THRESHOLD, Columns.CONFIDENCE, Columns.ENTROPY), float("nan"))
        return {Columns.PROBABILITY: float(probs[k]), Columns.THRESHOLD: float(self.thresholds[k]),
                Columns.CONFIDENCE: float((probs[k] - self.thresholds[k]).abs()),
                Columns.ENTROPY: float(torch.distributions.Bernoulli(probs=probs[k]).entropy())}

    def __call__(self, engine: Engine) -> None:
        for batch_item, item in self.items(engine):
            probs = item[self.pred_key].detach().float().cpu()
            positive = probs >= self.thresholds
            label = batch_item.get(self.label_key)
            shared = {Columns.PREDICTED_FINDINGS: ";".join(n for n, p in zip(self.class_names, positive) if p)}
            shared.update({probability_column(name): float(p) for name, p in zip(self.class_names, probs)})
            rows = item.get(OutputKeys.ROWS) or [{Columns.FINDING: ""}]
            item[OutputKeys.ROWS] = rows
            for row in rows:
                k = self.class_names.index(row[Columns.FINDING]) if row.get(Columns.FINDING) else None
                row.update(self._finding_columns(probs, k))
                if label is not None:
                    truth = torch.as_tensor(label).float().cpu()
                    row.update({Columns.LABEL: ";".join(n for n, t in zip(self.class_names, truth) if t > 0),
                                Columns.CORRECT: int(bool(truth[k] > 0)) if k is not None else int(bool((truth > 0).sum() == 0))})
                row.update(shared)


class SampleTableWriter(IterationHandler):
    """Streams the rows, sample id first, to ``path`` (CSV) with the union of all rows' columns in first-seen order.

    Rows go to a JSON-lines file as they come and become the CSV at the end (two streamed passes), since a row of a
    late sample may have columns the first one lacked (e.g. an image with no finding has no SegU score). In a
    distributed run each rank streams its own shard's lines and rank 0 merges them, rank by rank, into the one CSV.
    Each iteration's lines are flushed, so a run that fails or is killed keeps every finished row in its lines file;
    the CSV is written to a temporary file renamed over ``path`` only when the run completes, so ``path`` holds either
    the previous run's whole table or this run's. No exception handler: Ignite lets an error propagate without one.
    """

    def __init__(self, path: str | Path, id_key: str = Columns.IMAGE_ID) -> None:
        self.path, self.id_key = Path(path), id_key
        self._lines = None

    def _lines_path(self, rank: int) -> Path:
        return self.path.with_suffix(f".rank{rank}.jsonl" if idist.get_world_size() > 1 else ".jsonl")

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.open)
        engine.add_event_handler(Events.COMPLETED, self.write_table)

    def open(self, engine: Engine | None = None) -> None:
        """Start this rank's lines file (every rank, so that an empty shard still leaves one to merge)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lines = open(self._lines_path(idist.get_rank()), "w")

    def __call__(self, engine: Engine) -> None:
        if self._lines is None:
            self.open()
        for batch_item, item in self.items(engine):
            for row in item_rows(item):
                self._lines.write(json.dumps({self.id_key: str(batch_item[self.id_key]), **row}) + "\n")
        self._lines.flush()

    def close(self, engine: Engine | None = None) -> None:
        if self._lines is not None:
            self._lines.close()
            self._lines = None

    def write_table(self, engine: Engine | None = None) -> None:
        """Close the lines and, on rank 0 once every rank has closed its own, write the CSV from all of them; a run
        ended early by ``engine.terminate()`` has only some rows, so it keeps its lines file and writes no table."""
        self.close()
        if engine is not None and engine.should_terminate:
            logger.warning("Run terminated early: no %s; the rows written so far are in %s", self.path, self._lines_path(idist.get_rank()))
            return
        idist.barrier()
        if idist.get_rank() > 0:
            return
        parts = [self._lines_path(rank) for rank in range(idist.get_world_size())]

        def rows():
            for part in parts:
                with open(part) as lines:
                    yield from map(json.loads, lines)

        columns = list(dict.fromkeys(key for row in rows() for key in row))
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        with open(partial, "w", newline="") as table:
            writer = csv.DictWriter(table, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows())
        os.replace(partial, self.path)
        for part in parts:
            part.unlink()
        logger.info("Wrote %s", self.path)


class MaskWriter(IterationHandler):
    """Writes ``<id><suffix>.png`` (0/255) from a probability key, resampled to the image's original size."""

    def __init__(
        self, output_dir: str | Path, key: str = OutputKeys.REGION_PROB, threshold: float = 0.5, suffix: str = "_mask",
        id_key: str = Columns.IMAGE_ID, size_key: str = "original_size",
    ) -> None:
        self.output_dir, self.key, self.threshold, self.suffix = Path(output_dir), key, threshold, suffix
        self.id_key, self.size_key = id_key, size_key
        self.requires = (key,)

    def __call__(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for batch_item, item in self.items(engine):
            mask = mask_at_size(item[self.key], batch_item.get(self.size_key), self.threshold)
            Image.fromarray(mask.astype(np.uint8) * 255).save(self.output_dir / f"{batch_item[self.id_key]}{self.suffix}.png")


def mask_at_size(prob: torch.Tensor, size, threshold: float) -> np.ndarray:
    """A ``(1, *spatial)`` probability resampled to ``size`` (the image's original size; None: as it is), ``> threshold``."""
    return (resize_maps(prob.detach().float().cpu()[None], size)[0, 0] > threshold).numpy()
