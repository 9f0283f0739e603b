"""Classification metrics MONAI lacks: the confusion matrix, balanced accuracy (mean per-class recall), a macro AUROC
over the classes that occur, and the mean validation loss from probabilities (to rank epochs whose key metric ties)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import CumulativeIterationMetric, compute_roc_auc

logger = logging.getLogger(__name__)


def one_sided_classes(y: torch.Tensor) -> tuple[list[int], list[int]]:
    """Indices of the classes with no positive and of those with no negative among ``(N, K)`` 0/1 labels."""
    positives = y.sum(0)
    return torch.nonzero(positives == 0).flatten().tolist(), torch.nonzero(positives == y.shape[0]).flatten().tolist()


class WarnOnce:
    """Logs each distinct warning once per metric object (once per run, not every epoch), naming classes by name."""

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self.class_names, self._warned = list(class_names) if class_names else None, set()

    def names(self, indices: list[int]) -> list[str] | list[int]:
        return [self.class_names[i] for i in indices] if self.class_names else indices

    def __call__(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)


def compute_confusion_matrix(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(K, K)`` counts, rows = true class, columns = predicted class, from ``(B, K)`` scores/one-hot and ``(B, K)`` one-hot labels."""
    if y_pred.shape != y.shape or y_pred.ndim != 2:
        raise ValueError(f"expected y_pred and y of equal shape (B, K), got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    k = y.shape[1]
    return torch.bincount(y.argmax(1) * k + y_pred.argmax(1), minlength=k * k).reshape(k, k)


def balanced_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Mean recall over the classes that occur (rows with no sample are left out rather than counted as 0)."""
    support = confusion.sum(1)
    recall = confusion.diagonal().double() / support.clamp(min=1)
    return recall[support > 0].mean()


class ConfusionMatrixCounts(CumulativeIterationMetric):
    """Accumulates predictions over an epoch; ``aggregate()`` gives the ``(K, K)`` confusion matrix.

    ``y_pred``: ``(B, K)`` probabilities or logits (one arg-max); ``y``: ``(B, K)`` one-hot labels or ``(B,)`` class
    indices, so a trainer's metric needs no per-sample post-processing.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        true = y.argmax(1) if y.shape == y_pred.shape else y.reshape(-1).long()
        return torch.stack([true, y_pred.argmax(1)], dim=1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        pairs = self.get_buffer().long()
        return torch.bincount(pairs[:, 0] * self.num_classes + pairs[:, 1], minlength=self.num_classes**2).reshape(self.num_classes, -1)


class BalancedAccuracy(ConfusionMatrixCounts):
    """Balanced accuracy over an epoch, from the accumulated confusion matrix; warns (once) naming absent classes."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        super().__init__(num_classes)
        self.warn = WarnOnce(class_names)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        confusion = super().aggregate()
        absent = torch.nonzero(confusion.sum(1) == 0).flatten().tolist()
        if absent:
            self.warn(f"balanced accuracy is the mean recall of the {self.num_classes - len(absent)} of {self.num_classes} classes present: no sample of {self.warn.names(absent)}.")
        return balanced_accuracy(confusion)


class MulticlassAccuracy(ConfusionMatrixCounts):
    """Fraction of samples whose arg-max class is the true class, over an epoch."""

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        confusion = super().aggregate()
        return confusion.diagonal().sum().double() / confusion.sum().clamp(min=1)


def per_class_auroc(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One-vs-rest AUROC per class from ``(N, K)`` probabilities and one-hot labels; NaN for a class absent or always present."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for each class with one label value; NaN says it
        return torch.tensor(compute_roc_auc(y_pred.float(), y.float(), average="none"), dtype=torch.float64)


class MacroAUROC(CumulativeIterationMetric):
    """Mean one-vs-rest AUROC over the classes that have both positives and negatives in the epoch.

    MONAI's ``ROCAUCMetric(average="macro")`` is NaN as soon as one class is missing from a (small) validation set.
    The classes left out are named in a warning (once per run), and so is a fold with fewer than two classes left:
    its macro AUROC cannot rank models (NaN with none).
    """

    def __init__(self, per_class: bool = False, class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.per_class, self.warn = per_class, WarnOnce(class_names)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([y_pred, y], dim=1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        buffer = self.get_buffer()
        k = buffer.shape[1] // 2
        no_positive, no_negative = one_sided_classes(buffer[:, k:])
        if no_positive or no_negative:
            self.warn(
                f"AUROC over the {k - len(no_positive) - len(no_negative)} of {k} classes with both outcomes among {buffer.shape[0]} samples;"
                f" left out: no positive {self.warn.names(no_positive)}, no negative {self.warn.names(no_negative)}."
            )
        if k - len(no_positive) - len(no_negative) < 2:
            self.warn(f"fewer than 2 classes with both outcomes among {buffer.shape[0]} samples: too few to rank models by macro AUROC.")
        auroc = per_class_auroc(buffer[:, :k], buffer[:, k:])
        return auroc if self.per_class else auroc.nanmean()


class MeanLoss(CumulativeIterationMetric):
    """Mean cross-entropy of probabilities against one-hot (or, ``multi_label``, 0/1) labels over an epoch.

    Computed from the post-processed probabilities (softmax or sigmoid), so the evaluator needs no logits; the
    channel dimension is 1, so segmentation maps ``(B, K, H, W)`` give the mean per-pixel cross-entropy.
    """

    def __init__(self, multi_label: bool = False, eps: float = 1e-7) -> None:
        super().__init__()
        self.multi_label, self.eps = multi_label, eps

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        p, y = y_pred.double().clamp(self.eps, 1 - self.eps), y.double()
        if self.multi_label:
            loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean(1)
        else:
            loss = -(y * p.log()).sum(1)
        return loss.reshape(loss.shape[0], -1).mean(1, keepdim=True)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        return self.get_buffer().mean()


def f1_optimal_thresholds(probs: torch.Tensor, labels: torch.Tensor, default: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class decision thresholds of a multi-label classifier that maximise F1 on ``(N, K)`` probabilities/labels.

    Predicting "positive" for ``p >= threshold``; every distinct probability is a candidate (sorted, cumulative
    counts: one pass per class). A class without positives keeps ``default`` and an F1 of NaN.
    """
    order = probs.argsort(0, descending=True)
    sorted_probs, sorted_labels = probs.gather(0, order), labels.gather(0, order).double()
    true_positives = sorted_labels.cumsum(0)
    predicted = torch.arange(1, probs.shape[0] + 1, dtype=torch.float64, device=probs.device)[:, None]
    f1 = 2 * true_positives / (predicted + sorted_labels.sum(0))
    # only the last of tied probabilities is a real cut: earlier ones would split equal scores
    last_of_tie = torch.ones_like(sorted_probs, dtype=torch.bool)
    last_of_tie[:-1] = sorted_probs[:-1] != sorted_probs[1:]
    best = torch.where(last_of_tie, f1, -1.0).argmax(0)
    has_positive = sorted_labels.sum(0) > 0
    thresholds = torch.where(has_positive, sorted_probs.gather(0, best[None])[0].double(), default)
    return thresholds, torch.where(has_positive, f1.gather(0, best[None])[0], torch.nan)
