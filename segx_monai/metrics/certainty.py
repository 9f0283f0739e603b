"""How well a certainty score (SegU) predicts whether a classification is correct (METHOD.md §3).

Inputs are 1-D tensors over predictions: ``scores`` (higher = more certain) and ``correct`` (bool or 0/1).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from monai.metrics import compute_roc_auc


def _check_scores(scores: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``scores`` as float and ``correct`` as bool after checking they are matching 1-D tensors of 0/1 labels."""
    if scores.ndim != 1 or correct.shape != scores.shape:
        raise ValueError(
            "scores and correct must be 1-D tensors of the same length, "
            f"got {tuple(scores.shape)} and {tuple(correct.shape)}."
        )
    if not ((correct == 0) | (correct == 1)).all():
        raise ValueError("correct must hold only 0/1 (or bool) values.")
    return (scores if scores.is_floating_point() else scores.float()), correct.bool()


class CorrectnessMeans(NamedTuple):
    """Mean score of correct and of incorrect predictions (NaN for an empty group) with the group sizes."""

    correct: torch.Tensor
    incorrect: torch.Tensor
    n_correct: torch.Tensor
    n_incorrect: torch.Tensor


def mean_by_correctness(scores: torch.Tensor, correct: torch.Tensor) -> CorrectnessMeans:
    """Mean score of correct vs incorrect predictions, the comparison of the paper's Table 4."""
    scores, correct = _check_scores(scores, correct)
    return CorrectnessMeans(
        correct=scores[correct].mean(),  # the mean of an empty selection is NaN
        incorrect=scores[~correct].mean(),
        n_correct=correct.sum(),
        n_incorrect=(~correct).sum(),
    )


def correctness_auroc(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """AUROC of the score as a predictor of correctness: the chance a correct prediction outscores an incorrect one.

    Uses MONAI's ``compute_roc_auc`` (ties count one half). Undefined without both groups: then warns and returns NaN.
    """
    scores, correct = _check_scores(scores, correct)
    n_correct = int(correct.sum())
    if n_correct in (0, len(correct)):
        warnings.warn(
            f"correctness AUROC is undefined: it needs correct and incorrect predictions, got {n_correct} correct "
            f"and {len(correct) - n_correct} incorrect; returning NaN.",
            stacklevel=2,
        )
        return torch.tensor(float("nan"), device=scores.device)
    return torch.tensor(compute_roc_auc(scores, correct.long()), device=scores.device)


class RiskCoverage(NamedTuple):
    """Risk-coverage curve: accuracy of the k most certain predictions at coverage k/N, and its AURC."""

    coverage: torch.Tensor
    accuracy: torch.Tensor
    aurc: torch.Tensor


def risk_coverage_curve(scores: torch.Tensor, correct: torch.Tensor) -> RiskCoverage:
    """Accuracy of the k highest-scored predictions for k = 1..N, to choose how many cases to trust automatically.

    Predictions are ranked by descending score with a stable sort, so ties keep index order. AURC is the mean
    risk (1 - accuracy) over the N coverages k/N (Geifman & El-Yaniv's area under the risk-coverage curve);
    lower is better.
    """
    scores, correct = _check_scores(scores, correct)
    if len(scores) == 0:
        raise ValueError("risk_coverage_curve needs at least one prediction.")
    ranking = torch.sort(scores, descending=True, stable=True).indices
    n_cases = torch.arange(1, len(scores) + 1, device=scores.device, dtype=scores.dtype)
    accuracy = correct[ranking].to(scores.dtype).cumsum(dim=0) / n_cases
    return RiskCoverage(coverage=n_cases / len(scores), accuracy=accuracy, aurc=(1 - accuracy).mean())
