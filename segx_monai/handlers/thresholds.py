"""Per-finding decision thresholds of a multi-label classifier, chosen on validation and saved beside its weights."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.utils import evenly_divisible_all_gather

from segx_monai.metrics.classification import f1_optimal_thresholds
from segx_monai.utils.staging import write_text_atomic


def load_thresholds(path: str | Path, class_names: Sequence[str]) -> list[float]:
    """The saved thresholds in ``class_names`` order; a clear error when the file is missing or lacks a class."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no decision thresholds; train the classifier first (they are chosen on validation).")
    saved = json.loads(path.read_text())["thresholds"]
    missing = [c for c in class_names if c not in saved]
    if missing:
        raise KeyError(f"{path}: no threshold for {missing}; it has {sorted(saved)}.")
    return [float(saved[c]) for c in class_names]


class F1ThresholdSaver:
    """On the validation evaluator: whenever the key metric improves, choose the F1-optimal threshold per class on
    that epoch's predictions and write them (with the F1s) to ``path``. Only ``(N, K)`` probabilities are kept.

    In a distributed run every rank attaches it: the validation shards are gathered, and rank 0 writes."""

    def __init__(self, path: str | Path, class_names: Sequence[str], output_transform: Callable = from_engine(["pred", "label"])) -> None:
        self.path, self.class_names, self.output_transform = Path(path), list(class_names), output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_if_best)

    def reset(self, engine: Engine) -> None:
        self.probs, self.labels = [], []

    def collect(self, engine: Engine) -> None:
        probs, labels = self.output_transform(engine.state.output)
        self.probs += [p.detach().float().cpu() for p in probs]
        self.labels += [y.detach().float().cpu() for y in labels]

    def save_if_best(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        probs, labels = torch.stack(self.probs), torch.stack(self.labels)
        if idist.get_world_size() > 1:
            probs, labels = (evenly_divisible_all_gather(t.to(idist.device()), concat=True).cpu() for t in (probs, labels))
        if idist.get_rank() > 0:
            return
        thresholds, f1 = f1_optimal_thresholds(probs, labels)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({
            "thresholds": dict(zip(self.class_names, thresholds.tolist())),
            "validation_f1": dict(zip(self.class_names, [None if v != v else v for v in f1.tolist()])),
            "epoch": engine.state.epoch,
        }, indent=1))
