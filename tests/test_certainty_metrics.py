"""Evaluation of a certainty score as a predictor of correctness, on hand-worked 4-case examples."""

import pytest
import torch

from segx_monai.metrics import correctness_auroc, mean_by_correctness, risk_coverage_curve

SCORES = torch.tensor([0.9, 0.2, 0.7, 0.4])
CORRECT = torch.tensor([1, 0, 0, 1])


def test_mean_by_correctness():
    # correct: (0.9 + 0.4) / 2, incorrect: (0.2 + 0.7) / 2
    means = mean_by_correctness(SCORES, CORRECT)
    assert means.correct.item() == pytest.approx(0.65)
    assert means.incorrect.item() == pytest.approx(0.45)
    assert (means.n_correct.item(), means.n_incorrect.item()) == (2, 2)


def test_mean_by_correctness_with_an_empty_group():
    means = mean_by_correctness(SCORES, torch.ones(4, dtype=torch.bool))
    assert means.correct.item() == pytest.approx(0.55) and means.incorrect.isnan()
    assert means.n_incorrect.item() == 0


def test_correctness_auroc():
    # correct vs incorrect pairs: 0.9>0.2, 0.9>0.7, 0.4>0.2, 0.4<0.7 -> 3/4
    assert correctness_auroc(SCORES, CORRECT).item() == pytest.approx(0.75)
    separating = torch.tensor([0.8, 0.1, 0.9, 0.3])
    labels = torch.tensor([True, False, True, False])
    assert correctness_auroc(separating, labels).item() == pytest.approx(1.0)
    assert correctness_auroc(-separating, labels).item() == pytest.approx(0.0)
    assert correctness_auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])).item() == pytest.approx(0.5)  # tie


def test_correctness_auroc_single_class_is_nan_with_reason():
    with pytest.warns(UserWarning, match="4 correct and 0 incorrect"):
        assert correctness_auroc(SCORES, torch.ones(4)).isnan()


def test_risk_coverage_curve():
    # ranked by score: 0.9 (correct), 0.7 (wrong), 0.4 (correct), 0.2 (wrong)
    # accuracy of the top k: 1, 1/2, 2/3, 2/4; risk: 0, 1/2, 1/3, 1/2 -> AURC = (4/3) / 4 = 1/3
    curve = risk_coverage_curve(SCORES, CORRECT)
    torch.testing.assert_close(curve.coverage, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(curve.accuracy, torch.tensor([1.0, 1 / 2, 2 / 3, 2 / 4]))
    assert curve.aurc.item() == pytest.approx(1 / 3)


def test_risk_coverage_ties_keep_index_order():
    # equal scores: cases 0 (wrong), 1, 2 (correct) in index order -> 0, 1/2, 2/3
    curve = risk_coverage_curve(torch.full((3,), 0.5), torch.tensor([0, 1, 1]))
    torch.testing.assert_close(curve.accuracy, torch.tensor([0.0, 1 / 2, 2 / 3]))


@pytest.mark.parametrize(
    "scores, correct, message",
    [
        (SCORES, CORRECT[:3], "same length"),
        (SCORES[None], CORRECT[None], "1-D"),
        (SCORES, torch.tensor([1, 0, 2, 1]), "0/1"),
    ],
)
def test_invalid_inputs(scores, correct, message):
    with pytest.raises(ValueError, match=message):
        mean_by_correctness(scores, correct)


def test_risk_coverage_needs_a_prediction():
    with pytest.raises(ValueError, match="at least one"):
        risk_coverage_curve(torch.tensor([]), torch.tensor([]))
