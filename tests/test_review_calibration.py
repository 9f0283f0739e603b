"""The review threshold chosen on validation (golden curves and choices), the combined score, and the calibration
file as the bundles write and read it."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import CALIBRATE, HAM_CONFIGS, INFER, REPO, ham_workflow, run_workflow
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns
from segx_monai.handlers.segx import SegUScores
from segx_monai.metrics.calibration import (
    choose_review_threshold, combined_score, fit_combined_score, review_threshold_curve,
)

NAN = math.nan
# six validation cases by hand; the two cases scoring 0.2 are tied
SCORES = torch.tensor([0.1, 0.2, 0.2, 0.5, 0.7, 0.9])
CORRECT = torch.tensor([0, 0, 1, 1, 0, 1])


def test_curve_by_hand():
    curve = review_threshold_curve(SCORES, CORRECT)
    top = SCORES.max().double()
    torch.testing.assert_close(curve.thresholds[:5], torch.tensor([0.1, 0.2, 0.5, 0.7, 0.9], dtype=torch.float64), atol=1e-7, rtol=0)
    assert top < curve.thresholds[-1] < top + 1e-12  # the next float above the highest score: flags every case
    # accepted: score >= t; the tied 0.2s go together
    assert curve.n_accepted.tolist() == [6, 5, 3, 2, 1, 0] and curve.n_flagged.tolist() == [0, 1, 3, 4, 5, 6]
    torch.testing.assert_close(curve.coverage, torch.tensor([1, 5 / 6, 0.5, 1 / 3, 1 / 6, 0], dtype=torch.float64))
    torch.testing.assert_close(curve.accepted_error, torch.tensor([3 / 6, 2 / 5, 1 / 3, 1 / 2, 0, NAN], dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(curve.flagged_error, torch.tensor([NAN, 1, 2 / 3, 2 / 4, 3 / 5, 3 / 6], dtype=torch.float64), equal_nan=True)


def test_the_two_goals_choose_different_thresholds_on_the_same_cases():
    by_error = choose_review_threshold(SCORES, CORRECT, "accepted_error", 0.35)  # lowest t with accepted error <= 0.35: 1/3 at 0.5
    assert by_error.threshold == pytest.approx(0.5) and by_error.coverage == 0.5 and by_error.accepted_error == pytest.approx(1 / 3)
    assert (by_error.n_accepted, by_error.n_flagged, by_error.note) == (3, 3, "")
    by_rate = choose_review_threshold(SCORES, CORRECT, "flag_rate", 0.35)  # at most 2.1 of 6 flagged: 1 at 0.2 (3 at 0.5)
    assert by_rate.threshold == pytest.approx(0.2) and by_rate.n_flagged == 1 and by_rate.flagged_error == 1.0
    assert choose_review_threshold(SCORES, CORRECT, "flag_rate", 0.5).threshold == pytest.approx(0.5)  # 3 of 6


def test_degenerate_validation_folds():
    no_error = choose_review_threshold(SCORES, torch.ones(6), "accepted_error", 0.0)
    assert no_error.threshold == pytest.approx(0.1) and no_error.n_flagged == 0 and "meets the target" in no_error.note
    all_wrong = choose_review_threshold(SCORES, torch.zeros(6), "accepted_error", 0.1)
    assert all_wrong.threshold > float(SCORES.max()) and all_wrong.n_flagged == 6 and math.isnan(all_wrong.accepted_error)
    assert "every case is flagged" in all_wrong.note
    ties = choose_review_threshold(torch.full((4,), 0.3), torch.tensor([1, 1, 0, 1]), "flag_rate", 0.5)
    assert ties.n_flagged == 0 and ties.threshold == pytest.approx(0.3)  # tied cases cannot be split: none flagged
    # a case without a score is flagged at every threshold
    scores, correct = torch.tensor([NAN, 0.3, 0.6]), torch.tensor([0, 1, 1])
    curve = review_threshold_curve(scores, correct)
    assert curve.n_flagged.tolist() == [1, 2, 3] and curve.flagged_error[0] == 1.0
    nan_first = choose_review_threshold(scores, correct, "accepted_error", 0.0)
    assert nan_first.threshold == pytest.approx(0.3) and nan_first.n_flagged == 1 and "without a score" in nan_first.note
    over_rate = choose_review_threshold(scores, correct, "flag_rate", 0.2)
    assert over_rate.n_flagged == 1 and "alone exceed" in over_rate.note
    with pytest.raises(ValueError, match="finite score"):
        review_threshold_curve(torch.tensor([NAN, NAN]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="review_goal"):
        choose_review_threshold(SCORES, CORRECT, "coverage", 0.1)
    with pytest.raises(ValueError, match="review_target"):
        choose_review_threshold(SCORES, CORRECT, "flag_rate", 1.5)


def test_combined_score_matches_scikit_learn():
    rng = np.random.default_rng(0)
    features = np.column_stack([rng.uniform(0.3, 1, 40), rng.uniform(0, 0.4, 40)])
    correct = (features[:, 0] + features[:, 1] + rng.normal(0, 0.2, 40) > 0.9).astype(int)
    fit = fit_combined_score(torch.as_tensor(features), torch.as_tensor(correct), ["confidence", "ciou"])
    assert fit["fitted"] and json.loads(json.dumps(fit)) == fit  # plain numbers only
    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, correct)
    expected = pipeline.predict_proba(features)[:, 1]
    np.testing.assert_allclose(combined_score(fit, torch.as_tensor(features)).numpy(), expected, rtol=1e-10)
    with_nan = features.copy()
    with_nan[0, 1] = np.nan
    assert torch.isnan(combined_score(fit, torch.as_tensor(with_nan))[0])
    single = fit_combined_score(torch.as_tensor(features), torch.ones(40), ["confidence", "ciou"])
    assert not single["fitted"] and "single class" in single["reason"]
    with pytest.raises(ValueError, match="not made"):
        combined_score(single, torch.as_tensor(features))


def test_segu_flags_a_low_score_and_writes_the_combined_score():
    fit = {"fitted": True, "features": ["confidence", "crelevance_mass"], "coefficients": [2.0, -1.0], "intercept": 0.5,
           "means": [0.5, 0.2], "scales": [0.1, 0.4]}
    handler = SegUScores(q=0.25, review_threshold=0.3, score="crelevance_mass", combined=fit)
    maps = torch.zeros(2, 1, 1, 4, 4)
    maps[0, 0, 0, :2] = 1  # all of its relevance in the region; the second map is all zero: relevance mass 0
    region = torch.zeros(2, 1, 1, 4, 4, dtype=torch.bool)
    region[:, 0, 0, :2] = True
    items = [{"map": maps[i], "region_mask": region[i], "rows": [{Columns.CONFIDENCE: 0.7}]} for i in range(2)]
    handler(type("Engine", (), {"state": type("State", (), {"output": items})()})())
    first, second = items[0]["rows"][0], items[1]["rows"][0]
    assert first[Columns.CRELEVANCE_MASS] == 1.0 and first[Columns.REVIEW] == 0
    assert second[Columns.CRELEVANCE_MASS] == 0.0 and second[Columns.REVIEW] == 1
    # sigmoid(2 (0.7 - 0.5) / 0.1 - (mass - 0.2) / 0.4 + 0.5)
    assert first[Columns.COMBINED] == pytest.approx(1 / (1 + math.exp(-(4.0 - 2.0 + 0.5))))
    assert second[Columns.COMBINED] == pytest.approx(1 / (1 + math.exp(-(4.0 + 0.5 + 0.5))))
    with pytest.raises(ValueError, match="combined fit"):
        SegUScores(score="ciou", combined=fit)


def _last_line(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(HAM_CONFIGS / "inference.yaml"),
                           "--image_size", "32", "--num_workers", "0", *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    return done.returncode, done.stdout.strip().splitlines()[-1]


def test_a_missing_or_mismatched_calibration_ends_the_run_naming_it(trained_ham_bundle, ham_dir, tmp_path):
    common = ["--bundle_root", str(trained_ham_bundle), "--dataset_dir", str(ham_dir), "--inference_dir", str(tmp_path / "out")]
    code, last = _last_line(*common, "--explainer_name", "gradcampp")  # calibrated for gradcam only
    missing = trained_ham_bundle / "models" / "review_gradcampp.json"
    assert code != 0 and last.startswith("error: ") and str(missing) in last, last
    assert "run calibrating" in last and "--review_threshold" in last
    code, last = _last_line(*common, "--top_fraction", "0.1")
    assert code != 0 and str(trained_ham_bundle / "models" / "review_gradcam.json") in last and "top_fraction 0.05" in last, last
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_a_calibration_at_another_image_size_does_not_apply(trained_ham_bundle, ham_dir):
    calibrated = json.loads((trained_ham_bundle / "models" / "review_gradcam.json").read_text())["settings"]["image_size"]
    same = ham_workflow(trained_ham_bundle, ham_dir, INFER)
    assert same.parser.get_parsed_content("review_threshold") == pytest.approx(
        json.loads((trained_ham_bundle / "models" / "review_gradcam.json").read_text())["scores"]["crelevance_mass"]["threshold"])
    other = ham_workflow(trained_ham_bundle, ham_dir, INFER, image_size=calibrated + 16)
    with pytest.raises(RuntimeError) as raised:  # MONAI's evaluation error, raised from the calibration's
        other.parser.get_parsed_content("review_threshold")
    assert f"calibrated with image_size {calibrated}, but this run has image_size {calibrated + 16}" in str(raised.value.__cause__)


def test_a_threshold_given_by_hand_replaces_the_calibrated_one(trained_ham_bundle, ham_dir, tmp_path):
    """--review_threshold needs no calibration file, also when the file was measured otherwise (no combined score)."""
    images = [str(p) for p in sorted(ham_dir.rglob("ISIC_*.jpg"))[:4]]
    out = tmp_path / "out"
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, INFER, workflow_type="infer", input=images, inference_dir=str(out),
                              review_threshold=0.02, top_fraction=0.1))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 4 and all(r[Columns.REVIEW] == str(int(not float(r[Columns.CIOU]) >= 0.02)) for r in rows)
    assert Columns.COMBINED not in rows[0]


def test_the_review_goal_changes_the_calibrated_thresholds(trained_ham_bundle, ham_dir, tmp_path):
    saved = json.loads((trained_ham_bundle / "models" / "review_gradcam.json").read_text())  # the fixture's calibration
    assert saved["goal"] == "accepted_error" and saved["fold"] == "validation" and saved["n_cases"] > 0
    assert set(saved["scores"]) == {Columns.CONFIDENCE, *CERTAINTY_SCORES} and set(saved["combined"]) == set(CERTAINTY_SCORES)
    assert saved["settings"]["top_fraction"] == 0.05 and saved["settings"]["certainty_scores"] == list(CERTAINTY_SCORES)
    review_file = tmp_path / "review_flag_rate.json"
    run_workflow(ham_workflow(trained_ham_bundle, ham_dir, CALIBRATE, review_goal="flag_rate", review_target=0.1,
                              review_file=str(review_file), calibrate_dir=str(tmp_path / "calibrate")))
    by_rate = json.loads(review_file.read_text())
    assert by_rate["goal"] == "flag_rate" and by_rate["n_cases"] == saved["n_cases"]
    thresholds = {goal: [content["scores"][s]["threshold"] for s in CERTAINTY_SCORES] for goal, content in
                  (("accepted_error", saved), ("flag_rate", by_rate))}
    assert thresholds["accepted_error"] != thresholds["flag_rate"], thresholds
    for score in CERTAINTY_SCORES:  # each choice is the one its goal makes on the validation rows of samples.csv
        assert by_rate["scores"][score]["n_flagged"] <= 0.1 * by_rate["n_cases"] + 1e-9
    rows = list(csv.DictReader(open(tmp_path / "calibrate" / "samples.csv")))
    scores = torch.tensor([float(r[Columns.CIOU]) for r in rows])
    correct = torch.tensor([int(r[Columns.CORRECT]) for r in rows])
    assert choose_review_threshold(scores, correct, "flag_rate", 0.1).threshold == pytest.approx(by_rate["scores"]["ciou"]["threshold"])


def test_the_report_counts_accepted_and_flagged_errors_by_hand():
    from segx_monai.report.interpretation import _review_outcomes

    samples = {Columns.IMAGE_ID: np.array(list("abcdef")), Columns.REVIEW: np.array([1, 1, 0, 0, 0, NAN]),
               Columns.CORRECT: np.array([0, 1, 1, 0, 1, 0])}  # f: no review flag, left out
    outcome = _review_outcomes(samples)
    assert {k: outcome[k] for k in ("n", "n_flagged", "n_accepted", "errors_flagged", "errors_accepted")} == {
        "n": 5, "n_flagged": 2, "n_accepted": 3, "errors_flagged": 1, "errors_accepted": 1}
    assert (outcome["flag_rate"], outcome["flagged_error"], outcome["accepted_error"]) == pytest.approx((2 / 5, 1 / 2, 1 / 3))


def test_the_review_target_changes_the_calibrated_thresholds(trained_ham_bundle, ham_dir, tmp_path):
    thresholds = {}
    for target in (0.1, 0.5):  # flag at most 10% vs 50% of the validation cases
        review_file = tmp_path / f"review_{target}.json"
        run_workflow(ham_workflow(trained_ham_bundle, ham_dir, CALIBRATE, review_goal="flag_rate", review_target=target,
                                  review_file=str(review_file), calibrate_dir=str(tmp_path / f"calibrate_{target}")))
        thresholds[target] = [json.loads(review_file.read_text())["scores"][s]["threshold"] for s in CERTAINTY_SCORES]
    assert all(low <= high for low, high in zip(thresholds[0.1], thresholds[0.5])) and thresholds[0.1] != thresholds[0.5], thresholds
