"""The guidance weight chosen on validation, and the side-by-side page."""

import json
import math

import pytest

from segx_monai.report.guidance import MASS, SCORE, choose_guidance, comparison_rows, guidance_html, write_guidance_report

VALIDATION = {
    "plain": {SCORE: 1.0, MASS: 0.55},
    "gradcam w=1": {SCORE: 0.99, MASS: 0.80},
    "gradcam w=10": {SCORE: 0.95, MASS: 0.90},
}


def test_the_most_relevance_in_the_region_within_the_score_tolerance_is_chosen():
    assert choose_guidance(VALIDATION, tolerance=0.02) == "gradcam w=1"  # w=10 scores 0.05 below plain
    assert choose_guidance(VALIDATION, tolerance=0.1) == "gradcam w=10"


def test_plain_is_kept_when_no_guided_classifier_scores_close_enough():
    assert choose_guidance(VALIDATION, tolerance=0.001) == "plain"


def test_a_guided_classifier_without_a_relevance_mass_is_not_chosen():
    validation = VALIDATION | {"gradcam w=10": {SCORE: 1.0, MASS: math.nan}}
    assert choose_guidance(validation, tolerance=0.02) == "gradcam w=1"


def test_the_plain_classifier_is_required():
    with pytest.raises(KeyError, match="'plain'"):
        choose_guidance({k: v for k, v in VALIDATION.items() if k != "plain"})


def test_the_page_marks_the_choice_and_shows_every_figure(tmp_path):
    comparison = {
        "settings": {"bundle": "ham_segx", "method": "gradcam", "region": "ground_truth", "max_epochs": 5},
        "tolerance": 0.02, "chosen": "gradcam w=1", "validation": VALIDATION,
        "variants": {name: {"test AUROC": 0.9 + i / 100, "reversed AUROC": 0.7 + i / 100} for i, name in enumerate(VALIDATION)},
    }
    page = write_guidance_report(tmp_path / "ham_segx_guidance.json", comparison)
    text = page.read_text()
    assert "gradcam w=1 (chosen)" in text and "gradcam w=10 (chosen)" not in text
    for value in ("0.900", "0.710", "0.920", "0.800", "0.950"):
        assert value in text
    # the fall from the ordinary to the reversed fold, by hand: 0.90 - 0.70 for each classifier; no balanced accuracy here
    names, _, rows = comparison_rows(comparison)
    drops = {row[0]: row[1:] for row in rows}
    assert drops["AUROC drop, test to reversed"] == pytest.approx([0.2, 0.2, 0.2])
    assert all(math.isnan(v) for v in drops["balanced acc drop, test to reversed"])
    assert json.loads((tmp_path / "ham_segx_guidance.json").read_text())["chosen"] == "gradcam w=1"
    assert guidance_html(comparison) == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ham_segx_guidance.html", "ham_segx_guidance.json"]
