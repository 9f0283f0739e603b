"""Which validation epoch gives the best model: the higher key metric first, then the lower validation loss.

On a small validation fold the key metric saturates (a macro AUROC of 1.0, a Dice that stops moving) from the first
epochs on; MONAI keeps the first of tied epochs, so a barely trained model would stay "best" for ever. One score,
:func:`selection_score`, orders the epochs; the best-model saver, early stopping and the evaluator's
``best_metric``/``best_metric_epoch`` (read by the threshold saver, the search and the final log line) all follow it.
"""

from __future__ import annotations

import logging
import math

from ignite.engine import Engine, Events

logger = logging.getLogger(__name__)

# weight of the loss term: far below the smallest step of a [0, 1] key metric between epochs (an AUROC moves by
# 1 / (positives x negatives x classes), about 6e-7 on a 1000-image 7-class fold), far above float64 rounding near 1
TIE_WEIGHT = 1e-9
MIN_SAMPLES = 50  # fewer validation samples than this: one sample moves accuracy by 2% or more, AUROC and Dice saturate


def selection_score(metric: float, loss: float) -> float:
    """One number ordered like ``(metric, -loss)``: ``metric + TIE_WEIGHT / (1 + loss)``, for key metrics in [0, 1].

    A NaN metric (e.g. a macro AUROC with no class having both outcomes) ranks below every number, as -1, and a
    non-finite loss below every finite one, so such epochs are still ordered by what is known."""
    metric, loss = float(metric), float(loss)
    return (metric if math.isfinite(metric) else -1.0) + TIE_WEIGHT * (1.0 / (1.0 + loss) if math.isfinite(loss) and loss >= 0 else 0.0)


class ModelSelection:
    """On the validation evaluator, first in its handlers: writes ``score_name`` (the :func:`selection_score` of the
    key metric and ``loss_name``) into the epoch's metrics and sets ``best_metric``/``best_metric_epoch`` to the
    epoch of the highest score. Key the best-model saver (``key_metric_name``) and early stopping on ``score_name``.

    Warns once per run when the fold has fewer than ``min_samples`` samples (too few to rank epochs). Its state is
    saved with the resume checkpoint, so a restarted run keeps the true best epoch."""

    def __init__(self, loss_name: str = "val_loss", score_name: str = "val_selection_score", min_samples: int = MIN_SAMPLES) -> None:
        self.loss_name, self.score_name, self.min_samples = loss_name, score_name, min_samples
        self.best_score, self.best_metric, self.best_epoch = -math.inf, -1.0, -1
        self._warned_size = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state, metrics = engine.state, engine.state.metrics
        key = state.key_metric_name
        for name in (key, self.loss_name):
            if name not in metrics:
                raise KeyError(f"model selection needs the validation metric {name!r}; the evaluator computed {sorted(metrics)}.")
        score = metrics[self.score_name] = selection_score(metrics[key], metrics[self.loss_name])
        if score > self.best_score:
            self.best_score, self.best_metric, self.best_epoch = score, metrics[key], state.epoch
            logger.info("Best model so far: epoch %d, %s %.6g, %s %.6g.", state.epoch, key, metrics[key], self.loss_name, metrics[self.loss_name])
        state.best_metric, state.best_metric_epoch = self.best_metric, self.best_epoch
        n = len(engine.data_loader.dataset)
        if n < self.min_samples and not self._warned_size:
            self._warned_size = True
            logger.warning(
                "The validation fold has %d samples (fewer than %d): too few to rank epochs reliably; the best model is"
                " chosen by %s, then by the lower %s. Use a larger validation fraction.", n, self.min_samples, key, self.loss_name,
            )

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_metric": self.best_metric, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_score, self.best_metric, self.best_epoch = state["best_score"], state["best_metric"], state["best_epoch"]
