"""An evaluation's metrics as one CSV table: a row per value, vectors and matrices spread over rows by class.

Hand-written because MONAI's ``MetricsSaver`` writes a non-scalar metric (per-class AUROC, a confusion matrix) as the
multi-line text of its tensor, which no CSV reader can take back."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from segx_monai.utils.staging import write_text_atomic

COLUMNS = ("metric", "class", "predicted_class", "value")


def metric_rows(name: str, value, class_names: Sequence[str]) -> list[dict]:
    """The rows of one metric: a scalar in one row; a vector of one value per class, a row per class; a square matrix
    of class counts (rows true, columns predicted), a row per pair. Class indices where the sizes do not match."""
    tensor = torch.as_tensor(value, dtype=torch.float64).cpu()
    names = list(class_names) if tensor.ndim and tensor.shape[0] == len(class_names) else [str(i) for i in range(tensor.shape[0] if tensor.ndim else 0)]
    if tensor.ndim == 0:
        return [{"metric": name, "class": "", "predicted_class": "", "value": float(tensor)}]
    if tensor.ndim == 1:
        return [{"metric": name, "class": c, "predicted_class": "", "value": float(v)} for c, v in zip(names, tensor)]
    if tensor.ndim == 2 and tensor.shape[0] == tensor.shape[1]:
        return [{"metric": name, "class": t, "predicted_class": p, "value": float(tensor[i, j])}
                for i, t in enumerate(names) for j, p in enumerate(names)]
    raise ValueError(f"metric {name}: a {tuple(tensor.shape)} value has no table layout (scalar, per class, or class x class)")


class MetricsTable:
    """When the evaluator completes, write ``engine.state.metrics`` to ``path`` (columns ``metric, class,
    predicted_class, value``), atomically and on rank 0, metrics in the order the engine computed them."""

    def __init__(self, path: str | Path, class_names: Sequence[str] = ()) -> None:
        self.path, self.class_names = Path(path), list(class_names)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for name, value in engine.state.metrics.items():
            writer.writerows(metric_rows(name, value, self.class_names))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, out.getvalue())
