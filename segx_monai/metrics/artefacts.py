"""How far a classifier's scores depend on acquisition artefacts: the artefact the training fold associates with each
class, and AUROC on the test images whose artefacts agree with those associations apart from those where they do not."""

from __future__ import annotations

import torch

from segx_monai.metrics.classification import per_class_auroc


def artefact_association(labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(K,)`` index of the artefact each class shows more often than the other images do, by the largest difference
    of rates, from ``(N, K)`` 0/1 labels and ``(N, A)`` artefact presence; -1 for a class without positives or
    negatives, or that no artefact marks."""
    positive, present = labels.bool(), present.bool()
    if present.shape[1] == 0:
        return torch.full((labels.shape[1],), -1, dtype=torch.long)
    largest, artefact = (_rates(positive, present) - _rates(~positive, present)).max(1)
    marked = positive.any(0) & (~positive).any(0) & (largest > 0)
    return torch.where(marked, artefact, -1)


def _rates(rows: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``(K, A)`` share of the images in each column of ``(N, K)`` ``rows`` that show each of ``(N, A)`` artefacts."""
    return (rows[:, :, None] & present[:, None, :]).sum(0) / rows.sum(0).clamp(min=1)[:, None]


def artefact_agreement(labels: torch.Tensor, present: torch.Tensor, association: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` whether each image shows class k's associated artefact exactly when it is of class k (the artefact
    would point a shortcut to the right answer); False for classes without an association."""
    shown = present.bool()[:, association.clamp(min=0)]
    return (shown == labels.bool()) & (association >= 0)


def auroc_by_agreement(probs: torch.Tensor, labels: torch.Tensor, agree: torch.Tensor, association: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K,)`` one-vs-rest AUROC of each class on the images that agree for it and ``(K,)`` on those that do not; NaN
    for a class without an association, or a subset without both outcomes."""
    result = torch.full((2, probs.shape[1]), torch.nan, dtype=torch.float64)
    for k in torch.nonzero(association >= 0).flatten().tolist():
        for row, subset in enumerate((agree[:, k], ~agree[:, k])):
            if subset.any():
                result[row, k] = per_class_auroc(probs[subset, k : k + 1], labels[subset, k : k + 1]).reshape(-1)[0]
    return result[0], result[1]
