"""Single-label classification metrics MONAI lacks: the confusion matrix and balanced accuracy (mean per-class recall)."""

from __future__ import annotations

import warnings

import torch
from monai.metrics import CumulativeIterationMetric, compute_roc_auc


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
    """Accumulates predictions over an epoch; ``aggregate()`` gives the ``(K, K)`` confusion matrix."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([y.argmax(1), y_pred.argmax(1)], dim=1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        pairs = self.get_buffer().long()
        return torch.bincount(pairs[:, 0] * self.num_classes + pairs[:, 1], minlength=self.num_classes**2).reshape(self.num_classes, -1)


class BalancedAccuracy(ConfusionMatrixCounts):
    """Balanced accuracy over an epoch, from the accumulated confusion matrix."""

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        return balanced_accuracy(super().aggregate())


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
    """

    def __init__(self, per_class: bool = False) -> None:
        super().__init__()
        self.per_class = per_class

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([y_pred, y], dim=1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        buffer = self.get_buffer()
        k = buffer.shape[1] // 2
        auroc = per_class_auroc(buffer[:, :k], buffer[:, k:])
        return auroc if self.per_class else auroc.nanmean()


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
