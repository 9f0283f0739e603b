"""A review threshold chosen on validation for a stated goal, and a combined certainty score (METHOD.md §8).

A case is accepted when its certainty score is >= the threshold and flagged for review otherwise; a case whose score
is NaN cannot be checked and is always flagged. Inputs are 1-D tensors
over predictions: ``scores`` (higher = more certain) and ``correct`` (bool or 0/1), as in ``metrics.certainty``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from segx_monai.metrics.certainty import _check_scores

REVIEW_GOALS = ("accepted_error", "flag_rate")


class ReviewCurve(NamedTuple):
    """Per candidate threshold (ascending): share of cases accepted, error rate among accepted and among flagged cases
    (NaN where that group is empty), and the group sizes."""

    thresholds: torch.Tensor
    coverage: torch.Tensor
    accepted_error: torch.Tensor
    flagged_error: torch.Tensor
    n_accepted: torch.Tensor
    n_flagged: torch.Tensor


def review_threshold_curve(scores: torch.Tensor, correct: torch.Tensor) -> ReviewCurve:
    """Coverage and error rates of accepted and flagged cases at every candidate threshold: each distinct finite score
    (tied cases are accepted or flagged together), then the next float above the highest, which flags every case."""
    scores, correct = _check_scores(scores, correct)
    finite = torch.isfinite(scores)
    if not finite.any():
        raise ValueError(f"review_threshold_curve needs at least one finite score, got {len(scores)} case(s) and none.")
    distinct = torch.unique(scores[finite].double())
    thresholds = torch.cat([distinct, torch.nextafter(distinct[-1:], distinct.new_tensor([math.inf]))])
    accepted = finite[None] & (scores.double()[None] >= thresholds[:, None])  # (thresholds, cases); NaN never accepted
    wrong = (~correct).double()
    n_accepted, n_flagged = accepted.sum(1), (~accepted).sum(1)
    errors_accepted = (accepted.double() * wrong).sum(1)
    errors_flagged = wrong.sum() - errors_accepted
    return ReviewCurve(
        thresholds=thresholds, coverage=n_accepted.double() / len(scores),
        accepted_error=errors_accepted / n_accepted,  # 0 / 0 = NaN: no case accepted
        flagged_error=errors_flagged / n_flagged, n_accepted=n_accepted, n_flagged=n_flagged,
    )


def check_review_goal(goal: str, target: float) -> None:
    """Refuse an unknown ``goal`` or a ``target`` outside [0, 1] (both are shares of cases), naming the config key."""
    if goal not in REVIEW_GOALS:
        raise ValueError(f"review_goal must be one of {', '.join(REVIEW_GOALS)}, got {goal!r}.")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 1:
        raise ValueError(f"review_target must be a number in [0, 1] (a share of cases), got {target!r}.")


class ReviewChoice(NamedTuple):
    """The chosen threshold with its coverage, error rates, group sizes and, for a degenerate choice, why."""

    threshold: float
    coverage: float
    accepted_error: float
    flagged_error: float
    n_accepted: int
    n_flagged: int
    note: str


def choose_review_threshold(scores: torch.Tensor, correct: torch.Tensor, goal: str, target: float) -> ReviewChoice:
    """The review threshold meeting ``goal`` on these (validation) cases.

    ``accepted_error``: the lowest threshold (largest coverage) whose error rate among accepted cases is <= ``target``;
    without errors that accepts every case with a finite score, and when no threshold meets the target (e.g. all
    predictions wrong) every case is flagged. ``flag_rate``: the highest threshold flagging at most ``target`` of the
    cases; ties flag together, so the rate reached may be lower (NaN scores are flagged at any threshold, so a
    target below their share flags every case).
    """
    check_review_goal(goal, target)
    curve = review_threshold_curve(scores, correct)
    if goal == "accepted_error":
        meets = (curve.accepted_error <= target) | (curve.n_accepted == 0)
    else:
        meets = curve.n_flagged <= target * len(scores) + 1e-9  # a tolerance for the float product
        meets[0] |= not meets.any()  # the NaN-scored cases alone exceed the target: flag only those
    i = int(torch.nonzero(meets)[0 if goal == "accepted_error" else -1])
    note = ""
    if goal == "accepted_error" and int(curve.n_accepted[i]) == 0:
        note = f"no threshold keeps the error rate among accepted cases <= {target}: every case is flagged"
    elif goal == "accepted_error" and i == 0:
        note = "the error rate among all cases meets the target: only cases without a score are flagged"
    elif goal == "flag_rate" and int(curve.n_flagged[i]) > target * len(scores) + 1e-9:
        note = f"the cases without a score alone exceed the flag rate {target}: only they are flagged"
    return ReviewChoice(
        threshold=float(curve.thresholds[i]), coverage=float(curve.coverage[i]),
        accepted_error=float(curve.accepted_error[i]), flagged_error=float(curve.flagged_error[i]),
        n_accepted=int(curve.n_accepted[i]), n_flagged=int(curve.n_flagged[i]), note=note,
    )


def fit_combined_score(features: torch.Tensor, correct: torch.Tensor, names: list[str]) -> dict:
    """Logistic regression of correctness on the standardised ``(N, F)`` features (e.g. confidence and a SegU score),
    fitted with scikit-learn on the rows where all are finite, returned as plain numbers (no pickled estimator).

    Not fitted (``fitted: false`` with the ``reason``) when those rows hold a single class."""
    x, y = np.asarray(features, dtype=float), np.asarray(correct, dtype=int)
    if x.ndim != 2 or x.shape[1] != len(names) or len(y) != len(x):
        raise ValueError(f"fit_combined_score: features must be (N, {len(names)}) with N outcomes, got {x.shape} and {y.shape}.")
    used = np.isfinite(x).all(axis=1)
    x, y = x[used], y[used]
    fit = {"fitted": False, "features": list(names), "n": int(used.sum()), "n_left_out": int((~used).sum())}
    if len(np.unique(y)) < 2:
        return {**fit, "reason": f"the {len(y)} validation case(s) with every feature are all "
                f"{'correct' if y.all() else 'incorrect'}: a single class, nothing to fit"}
    scaler = StandardScaler().fit(x)
    model = LogisticRegression().fit(scaler.transform(x), y)
    return {**fit, "fitted": True, "coefficients": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]),
            "means": scaler.mean_.tolist(), "scales": scaler.scale_.tolist()}


def combined_score(fit: dict, features: torch.Tensor) -> torch.Tensor:
    """The fitted probability of a correct prediction for ``(N, F)`` features, from the plain numbers of
    :func:`fit_combined_score` (scikit-learn's ``predict_proba[:, 1]``); NaN where a feature is."""
    if not fit.get("fitted"):
        raise ValueError(f"combined_score: the fit was not made ({fit.get('reason', 'no reason recorded')}).")
    features = torch.as_tensor(features, dtype=torch.float64)
    params = {key: features.new_tensor(fit[key]) for key in ("coefficients", "means", "scales")}
    logits = ((features - params["means"]) / params["scales"]) @ params["coefficients"] + fit["intercept"]
    return torch.sigmoid(logits)
