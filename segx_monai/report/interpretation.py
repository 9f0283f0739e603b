"""Report of an interpretation run: raw vs SegX localisation and SegU certainty, as one offline HTML page
(``report.html``) and every number in it as ``summary.json``.

Reads the folder the evaluator writes: ``samples.csv`` (one row per prediction), ``curves.json`` (mean IoU-threshold
curves), ``run.json`` (settings) and ``overlays/<image_id>[_<finding>].png``; column and field names are those of
``segx_monai.handlers.contract``, which the handlers write. Rows are the unit of every statistic; intervals are
95% percentile-bootstrap intervals over resampled rows, seeded so a report can be rebuilt identically.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from segx_monai.explainers import COUNTERFACTUAL
from segx_monai.handlers import contract
from segx_monai.handlers.contract import Columns, CurveFields, curve_field, localization_column, pair_stem
from segx_monai.handlers.review import NOT_TUNED
from segx_monai.handlers.savers import COUNTERFACTUAL_PANELS, PANELS, display_percentile
from segx_monai.metrics.certainty import correctness_auroc, mean_by_correctness, risk_coverage_curve
from segx_monai.metrics.pointing import chexlocalize_summary
from segx_monai.report import render
from segx_monai.report.render import fmt, fmt_estimate
from segx_monai.report.sanity import sanity_section

LOCALIZATION_METRICS = dict(zip(contract.LOCALIZATION_METRICS, ("IoU@q", "AUITC", "Hit rate", "Relevance mass")))
ESTIMATES = ("raw", "segx", "difference")  # per localisation metric: the means and their paired difference
POINTING_METRICS = {"hit_rate": "Hit rate", "miou_all": "mIoU (TP+FP+FN)", "miou_tp": "mIoU (TP)"}  # chexlocalize_summary's
SINGLE_GROUP = "all pairs"  # the pointing table's one group of a single-label run that has no tuned thresholds
CERTAINTY_SCORES = contract.CERTAINTY_SCORE_NAMES
BASELINE_SCORES = dict(zip(contract.CONFIDENCE_SCORES, ("Confidence", "Negative entropy"), strict=True))
NEGATED_SCORES = {Columns.ENTROPY}  # lower means more certain: negated, so that every score ranks certain cases first
COMBINED_SCORE = {Columns.COMBINED: "Combined (confidence + SegU)"}  # fitted on validation, see run.json
COMPARED_SCORES = {**BASELINE_SCORES, **CERTAINTY_SCORES, **COMBINED_SCORE}  # the certainty table's rows, the baseline first
REVIEW_GOALS = {
    "accepted_error": "the largest coverage whose error rate among accepted predictions is at most {target}",
    "flag_rate": "flag at most {target} of the predictions",
}
COUNT_LABELS = {
    "rows": "Predictions (rows)", "images": "Images", "correct": "Correct", "incorrect": "Incorrect",
    "with_ground_truth_mask": "With ground-truth mask", "empty_region": "Empty predicted region",
    "review": "Flagged for review",
}
GALLERY_IOU = localization_column("iou_at_q", "segx")  # the best and worst localised cases are ranked by it
RAW_IOU = localization_column("iou_at_q", "raw")  # > 0: the raw map's top q overlaps the ground truth
RAW_MASS = localization_column("relevance_mass", "raw")  # the raw map's share of relevance inside the ground truth
GALLERY = {  # section -> (heading, how its cases are chosen)
    "best": ("Best localised", "highest SegX IoU@q with the ground-truth region, among those whose raw map's top q "
             "overlaps that region (raw IoU@q > 0), so that SegX cannot make a wrong explanation look right"),
    "worst": ("Worst localised", "lowest SegX IoU@q with the ground-truth region"),
    "outside": ("Looked outside the region", "lowest raw relevance mass: the classifier's own map put the least of "
                "its relevance inside the ground-truth region"),
    "review": ("Flagged for review", "lowest certainty score among those flagged for review (score below the review "
               "threshold)"),
    "uncertain": ("Most uncertain", "lowest SegU cIoU: the explanation lies mostly outside the segmented region"),
}
GALLERY_PANEL_WIDTH = 224  # pixels: overlay strips are enlarged so that each panel is at least this wide
EXPLAINER_SETTINGS = {  # run settings only these explainers read
    "shap_samples": ("gradient_shap",), "gradcam_layer": ("gradcam", "gradcampp", "eigencam"),
    "patch_map": ("patch_logits",), "patch_shifts": ("patch_logits",),
    **dict.fromkeys(("counterfactual_target", "counterfactual_threshold", "counterfactual_opening", "realism_features"), (COUNTERFACTUAL,)),
}
EXPLAIN = {
    "settings": "How the explanations were made: the explainer, how the map was restricted to the segmented region "
    "(SegX variant), the top fraction q of the map kept, the probability above which a pixel counts as clinical "
    "region, and the certainty below which a case is flagged for review.",
    "counts": "Number of predictions analysed. Localisation is measured only where a ground-truth outline of the "
    "clinical region exists; an empty predicted region means the segmentation found nothing to check the "
    "explanation against.",
    "localization": "How well each explanation points at the clinical region outlined by an expert, for the "
    "classifier's own map (raw) and for the map restricted to the segmented region (SegX); higher is better. "
    "Brackets hold 95% bootstrap intervals; a difference interval above 0 means SegX localises better. n without "
    "mask: predictions with no (or an empty) expert outline; n undefined: with one, but the metric has no value "
    "(relevance mass of an all-zero map).",
    "certainty": "How far each certainty score separates correct from incorrect diagnoses, all on the same "
    "predictions. Correct predictions should score higher. Confidence (the classifier's top softmax probability, or a "
    "finding's margin from its threshold) and negative entropy are the classifier's own certainty: SegU adds "
    "information only where it does better. AUROC is the chance that a correct prediction scores above an incorrect "
    "one (0.5 = chance, 1 = perfect); AURC is the error rate among the most certain cases averaged over all cut-offs "
    "(lower is better); the last column is the score's AUROC minus the confidence's on the same resampled cases. No "
    "winner is assumed: an interval that contains 0 means these data do not tell the two scores apart.",
    "review": "A prediction is accepted when its certainty score is at least the review threshold and flagged for "
    "review otherwise (or when the score is undefined). The threshold is chosen on the validation fold, never on "
    "these test cases; the table shows how it does here: the share flagged, and the error rate among the accepted "
    "and among the flagged predictions (errors / predictions).",
    "review_plot": "Validation fold: coverage (share of predictions accepted) against the error rate among the "
    "accepted ones, for every threshold; the dot marks the chosen one.",
    "auitc_plot": "Mean overlap with the expert outline when the [0, 1]-scaled map is cut at threshold τ; the area "
    "under each curve is the AUITC.",
    "risk_coverage_plot": "Accuracy among the most certain share of cases, for every certainty score on the same "
    "cases; a curve above the dashed line means the score puts correct predictions first.",
    "histogram_plot": "The score of correct and incorrect predictions; the less the two overlap, the better the score "
    "tells them apart.",
    "pointing": "cheXlocalize-style localisation: each map is scaled to [0, 1] per image (a scaled PatchNet map to "
    "[0, the prediction's probability]) and cut at a threshold "
    "chosen per finding and map on the validation fold (the best mean IoU over its true positives), never on these "
    "test cases, then compared with the finding's expert outline. Hit rate: share of the true positives (TP) whose "
    "map peaks inside the outline (pointing game). mIoU (TP+FP+FN): mean overlap over the true positives, the false "
    "positives (FP: a predicted finding that is absent) and the false negatives (FN: a present finding that was not "
    "predicted, so not explained), FP and FN counting 0; mIoU (TP): over the true positives only. Single-label "
    "(one region, such as the lesion, for every class): a correct prediction is a TP, a wrong one an FP (its class is "
    "absent, whatever the map shows), and there is no FN (the wrong prediction already counts the error once). Pooled: "
    "all pairs of the findings with a threshold. Brackets hold 95% bootstrap intervals over the TP, FP and FN pairs.",
    "gallery": f"Each strip shows, left to right and labelled above ({', '.join(PANELS)}), the image, the raw "
    "explanation, the predicted clinical region (green) and the SegX explanation (white outline: its binary map). Raw "
    "and SegX are drawn on one colour scale topped by the raw map, so a SegX map that kept little of the raw "
    "relevance looks cooler than one that kept all of it.",
    "gallery_counterfactual": "Here the explanation is a counterfactual: the second panel is the image the generator "
    "made from the first for the classifier to give the target outcome, and the raw explanation is their difference "
    "|X − X_cf|, in pixel units (1: black turned white).",
    "counterfactual": "Measures of the counterfactual explanations (COIN). Validity: among the confidently abnormal "
    "predictions (the target outcome's probability at most 1 − confidence), the share whose counterfactual raises "
    "that probability by more than τ, i.e. whether the generator does change the classifier's mind. Weak "
    "segmentation IoU: the overlap with the expert outline of the pixels the counterfactual changed by more than the "
    "threshold, as they are (raw) and within the segmented region (SegX); higher is better. Fréchet distance: how far "
    "the counterfactuals lie from real images of the target class, as Gaussians fitted to their features (the FID "
    "formula); 0 means alike, lower is better, and values compare only within one feature space.",
}


def _is_number(cell: str) -> bool:
    try:
        float(cell or "nan")
        return True
    except ValueError:
        return False


def load_samples(path: str | Path) -> dict[str, np.ndarray]:
    """``samples.csv`` as columns: ids, class names and any column with a non-numeric cell as strings, every other
    column as floats (empty = NaN)."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    if Columns.IMAGE_ID not in (reader.fieldnames or []):
        raise ValueError(f"{path} needs an {Columns.IMAGE_ID} column, got {reader.fieldnames}.")
    samples = {}
    for name in reader.fieldnames:
        cells = np.array([(row[name] or "").strip() for row in rows], dtype=str)
        samples[name] = cells if name in Columns.TEXT or not all(map(_is_number, cells)) else np.where(cells == "", "nan", cells).astype(float)
    return samples


def _column(samples: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A numeric column, all NaN when the table lacks it."""
    return samples.get(name, np.full(len(samples[Columns.IMAGE_ID]), np.nan))


def _text(samples: dict[str, np.ndarray], name: str, row: int) -> str:
    """A text cell, ``n/a`` when the column is missing or the cell empty."""
    return str(samples[name][row]) if name in samples and samples[name][row] else "n/a"


def _bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """How often each of ``n`` rows is drawn in each of ``n_bootstrap`` resamples with replacement, ``(B, n)``."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_bootstrap)


def _means_with_intervals(values: np.ndarray, n_bootstrap: int, seed: int) -> list[dict]:
    """Mean of each column of ``(n, k)`` values with its bootstrap interval; the columns share resamples (paired)."""
    if len(values) == 0:
        return [{"mean": math.nan, "ci": [math.nan, math.nan]} for _ in range(values.shape[1])]
    means = _bootstrap_counts(len(values), n_bootstrap, seed) @ values / len(values)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return [{"mean": float(m), "ci": [float(lo), float(hi)]} for m, lo, hi in zip(values.mean(axis=0), low, high)]


def _with_mask(samples: dict[str, np.ndarray]) -> np.ndarray:
    """Rows scored against a (non-empty) ground-truth mask: any raw localisation value defined. Without a mask the
    cells are empty; with one, IoU@q and hit are always defined, while relevance mass is not for an all-zero map."""
    return np.isfinite(np.stack([_column(samples, localization_column(key, "raw")) for key in LOCALIZATION_METRICS])).any(axis=0)


def _compare_localization(samples: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Per localisation metric: mean raw, SegX and SegX - raw with intervals, over the rows that have both values;
    the other rows are counted as without a ground-truth mask or, with one, as undefined (e.g. an all-zero map)."""
    results, with_mask = {}, _with_mask(samples)
    for key, name in LOCALIZATION_METRICS.items():
        raw, segx = _column(samples, localization_column(key, "raw")), _column(samples, localization_column(key, "segx"))
        used = np.isfinite(raw) & np.isfinite(segx)
        values = np.stack([raw[used], segx[used], segx[used] - raw[used]], axis=1)
        results[key] = {
            "name": name, "n": int(used.sum()), "n_without_mask": int((~with_mask).sum()),
            "n_undefined": int((with_mask & ~used).sum()),
            **dict(zip(ESTIMATES, _means_with_intervals(values, n_bootstrap, seed))),
        }
        if not used.any():
            results[key]["note"] = f"{name}: n/a, no prediction has a raw and a SegX value (no ground-truth mask)."
    return results


def _certainty_inputs(samples: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Every score of ``COMPARED_SCORES`` the table holds (an older table may lack some), oriented so that higher means
    more certain, and the correctness, over the rows that have an outcome and all of them, so that every score is
    judged on the same cases; also how many rows were left out."""
    keys = [key for key in COMPARED_SCORES if key in samples]
    columns = np.stack([_column(samples, key) * (-1 if key in NEGATED_SCORES else 1) for key in keys]
                       + [_column(samples, Columns.CORRECT)], axis=1)
    used = np.isfinite(columns).all(axis=1)
    scores = {key: torch.as_tensor(columns[used, i]) for i, key in enumerate(keys)}
    return scores, torch.as_tensor(columns[used, -1] == 1), int((~used).sum())


def _certainty_resamples(
    scores: dict[str, torch.Tensor], correct: torch.Tensor, n_bootstrap: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness AUROC and AURC of every score on each bootstrap resample of the rows, ``(B, scores)`` each; all
    scores share each resample (paired). AUROCs are NaN on a resample that lacks correct or incorrect predictions."""
    aurocs, aurcs = np.full((n_bootstrap, len(scores)), math.nan), np.full((n_bootstrap, len(scores)), math.nan)
    for b, counts in enumerate(_bootstrap_counts(len(correct), n_bootstrap, seed)):
        drawn = torch.as_tensor(np.repeat(np.arange(len(correct)), counts))
        aurcs[b] = [float(risk_coverage_curve(score[drawn], correct[drawn]).aurc) for score in scores.values()]
        if 0 < int(correct[drawn].sum()) < len(drawn):
            aurocs[b] = [float(correctness_auroc(score[drawn], correct[drawn])) for score in scores.values()]
    return aurocs, aurcs


def _intervals(estimates: np.ndarray) -> list[list[float]]:
    """95% percentile interval of each column of ``(B, k)`` bootstrap estimates, over the resamples defining them all."""
    estimates = estimates[np.isfinite(estimates).all(axis=1)]
    if not len(estimates):
        return [[math.nan, math.nan]] * estimates.shape[1]
    return np.percentile(estimates, [2.5, 97.5], axis=0).T.tolist()


def _evaluate_certainty(samples: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Per certainty score (``COMPARED_SCORES``), on the rows having all of them: mean for correct vs incorrect
    predictions, AUROC for correctness and AURC with intervals, and the paired AUROC difference score - confidence."""
    scores, correct, n_left_out = _certainty_inputs(samples)
    if len(correct):
        aurocs, aurcs = _certainty_resamples(scores, correct, n_bootstrap, seed)
    else:
        aurocs = aurcs = np.full((n_bootstrap, len(scores)), math.nan)
    keys = list(scores)
    base = keys.index(Columns.CONFIDENCE) if Columns.CONFIDENCE in scores else None
    auroc_cis, aurc_cis = _intervals(aurocs), _intervals(aurcs)
    results = {}
    for i, (key, score) in enumerate(scores.items()):
        name, means = COMPARED_SCORES[key], mean_by_correctness(score, correct)
        n_correct, n_incorrect = int(means.n_correct), int(means.n_incorrect)
        results[key] = {
            "name": name, "n": len(score), "n_left_out": n_left_out, "n_correct": n_correct, "n_incorrect": n_incorrect,
            "mean_correct": float(means.correct), "mean_incorrect": float(means.incorrect),
            "auroc": math.nan, "auroc_ci": auroc_cis[i],
            "aurc": float(risk_coverage_curve(score, correct).aurc) if len(score) else math.nan, "aurc_ci": aurc_cis[i],
        }
        if n_correct and n_incorrect:
            results[key]["auroc"] = float(correctness_auroc(score, correct))
        else:
            results[key]["note"] = (
                f"{name} AUROC: n/a, it needs both correct and incorrect predictions "
                f"(got {n_correct} correct, {n_incorrect} incorrect)."
            )
    if base is not None:  # a table without confidence (written by an older version) has no paired difference
        difference_cis = _intervals(aurocs - aurocs[:, [base]])
        for i, key in enumerate(keys):
            results[key]["auroc_minus_confidence"] = results[key]["auroc"] - results[Columns.CONFIDENCE]["auroc"]
            results[key]["auroc_minus_confidence_ci"] = difference_cis[i]
    return results


def _count_samples(samples: dict[str, np.ndarray]) -> dict[str, int]:
    """Rows, images, outcomes, rows with a ground-truth mask, with an empty predicted region, flagged for review."""
    correct, with_mask = _column(samples, Columns.CORRECT), _with_mask(samples)
    return {
        "rows": len(samples[Columns.IMAGE_ID]), "images": len(np.unique(samples[Columns.IMAGE_ID])),
        "correct": int((correct == 1).sum()), "incorrect": int((correct == 0).sum()),
        "with_ground_truth_mask": int(with_mask.sum()),
        "empty_region": int((_column(samples, Columns.EMPTY_REGION) == 1).sum()),
        "review": int((_column(samples, Columns.REVIEW) == 1).sum()),
    }


def _review_outcomes(samples: dict[str, np.ndarray]) -> dict[str, float | int]:
    """On the rows with an outcome and a review flag: how many are flagged, and the errors among accepted and among
    flagged rows, with their rates (NaN for an empty group)."""
    review, correct = _column(samples, Columns.REVIEW), _column(samples, Columns.CORRECT)
    used = np.isfinite(review) & np.isfinite(correct)
    flagged, wrong = review[used] == 1, correct[used] == 0
    counts = {"n": int(used.sum()), "n_flagged": int(flagged.sum()), "n_accepted": int((~flagged).sum()),
              "errors_accepted": int((wrong & ~flagged).sum()), "errors_flagged": int((wrong & flagged).sum())}
    rate = lambda k, n: k / n if n else math.nan  # noqa: E731
    return {**counts, "flag_rate": rate(counts["n_flagged"], counts["n"]),
            "accepted_error": rate(counts["errors_accepted"], counts["n_accepted"]),
            "flagged_error": rate(counts["errors_flagged"], counts["n_flagged"])}


def _review_threshold(samples: dict[str, np.ndarray], settings: dict) -> dict:
    """The run's review threshold, where it came from (``run.json``'s ``review_calibration``: the validation choice
    and curve, or set by hand) and how it does on these rows."""
    calibration = settings.get("review_calibration") or {}
    return {"threshold": settings.get("review_threshold"), "certainty_score": settings.get("certainty_score"),
            "calibration": calibration, "test": _review_outcomes(samples)}


def _review_section(review: dict) -> str:
    """The "Review threshold" section: the validation choice with its curve, and the flag and error rates on test."""
    calibration, test = review["calibration"], review["test"]
    score = CERTAINTY_SCORES.get(review["certainty_score"], review["certainty_score"] or "the certainty score")
    threshold = f"Threshold {fmt(review['threshold'])} on {score}"
    figures, notes = [], []
    if "goal" in calibration:
        goal = REVIEW_GOALS.get(calibration["goal"], "{target}").format(target=fmt(calibration["target"]))
        text = (f"{threshold}, chosen on the {calibration['fold']} fold ({calibration['n_cases']} predictions, "
                f"{calibration['n_errors']} incorrect) for the goal: {goal} (review_goal {calibration['goal']}, "
                f"review_target {fmt(calibration['target'])}); there it accepted {fmt(calibration['coverage'])} of the "
                f"predictions, with error rate {fmt(calibration['accepted_error'])} among them. From {calibration['source']}.")
        if calibration.get("note"):
            text += f" Note: {calibration['note']}."
        curve = calibration.get("curve", {})
        coverage, error = (np.asarray(curve.get(k, []), dtype=float) for k in ("coverage", "accepted_error"))
        if len(coverage):
            fig = render.line_plot({"validation": (coverage, error)}, "coverage (share of predictions accepted)",
                                   "error rate among accepted", "Review threshold")
            chosen = np.asarray([calibration["coverage"], calibration["accepted_error"]], dtype=float)  # null: NaN
            fig.axes[0].plot(*chosen[:, None], "o", color="black", label=f"chosen: threshold {fmt(review['threshold'])}")
            fig.axes[0].legend(fontsize=8)
            figures.append((render.figure_uri(fig), EXPLAIN["review_plot"]))
    else:
        text = f"{threshold}, {calibration.get('source', 'of unknown origin (run.json does not say)')}: not chosen on validation."
    if not figures:
        notes.append("Validation curve not drawn: the threshold was not calibrated in this run's settings.")
    counts = lambda k, n, r: f"{k} / {n} = {fmt(r)}"  # noqa: E731
    rows = [["Predictions with an outcome and a review flag", test["n"]],
            ["Flagged for review", counts(test["n_flagged"], test["n"], test["flag_rate"])],
            ["Error rate among accepted", counts(test["errors_accepted"], test["n_accepted"], test["accepted_error"])],
            ["Error rate among flagged", counts(test["errors_flagged"], test["n_flagged"], test["flagged_error"])]]
    return ("<h2>Review threshold</h2>" + render.paragraph(text)
            + render.table(["On the test fold", "Value"], rows, EXPLAIN["review"]) + render.figure_row(figures, notes=notes))


def _findings(cell: str) -> set[str]:
    """The findings of a ``;``-separated cell."""
    return set(filter(None, cell.split(";")))


def _missed_findings(samples: dict[str, np.ndarray]) -> Counter:
    """Multi-label: per finding, the images labelled with it whose prediction missed it (false negatives, never
    explained), from each image's ``label`` and ``predicted_findings``; single-label: none."""
    if Columns.FINDING not in samples:
        return Counter()
    n = len(samples[Columns.IMAGE_ID])
    labels, predicted = (samples.get(name, np.full(n, "")) for name in (Columns.LABEL, Columns.PREDICTED_FINDINGS))
    missed = Counter()
    for row in np.unique(samples[Columns.IMAGE_ID], return_index=True)[1]:
        missed.update(_findings(labels[row]) - _findings(predicted[row]))
    return missed


def _pointing_estimates(iou: np.ndarray, hit: np.ndarray, n_fp: int, n_fn: int, n_bootstrap: int, seed: int) -> dict:
    """``chexlocalize_summary`` of the raw and the SegX map (``(n_tp, 2)`` IoU and hit of the true positives) and
    their difference, each with an interval over bootstrap resamples of the TP + FP + FN pairs, paired across maps."""
    n_tp, n = len(iou), len(iou) + n_fp + n_fn
    point = [chexlocalize_summary(iou[:, v], hit[:, v], n_fp, n_fn) for v in range(2)]
    resampled = np.full((n_bootstrap, len(POINTING_METRICS), 2), math.nan)
    for b, counts in enumerate(_bootstrap_counts(n, n_bootstrap, seed) if n else []):
        drawn = np.repeat(np.arange(n), counts)
        tp, n_fp_drawn = drawn[drawn < n_tp], int(((drawn >= n_tp) & (drawn < n_tp + n_fp)).sum())
        for v in range(2):
            drawn_summary = chexlocalize_summary(iou[tp, v], hit[tp, v], n_fp_drawn, int((drawn >= n_tp + n_fp).sum()))
            resampled[b, :, v] = [drawn_summary[key] for key in POINTING_METRICS]
    estimates = {estimate: {} for estimate in ESTIMATES}
    for m, key in enumerate(POINTING_METRICS):
        means = [point[0][key], point[1][key], point[1][key] - point[0][key]]
        cis = _intervals(np.stack([resampled[:, m, 0], resampled[:, m, 1], resampled[:, m, 1] - resampled[:, m, 0]], axis=1))
        for estimate, mean, ci in zip(ESTIMATES, means, cis):
            estimates[estimate][key] = {"mean": mean, "ci": ci}
    return estimates


def _pointing(samples: dict[str, np.ndarray], record: dict | None, n_bootstrap: int, seed: int) -> dict:
    """The cheXlocalize-style table (``segx_monai.handlers.pointing``): per finding and pooled, the tuned thresholds
    (``run.json``'s ``localization_thresholds``) and ``_pointing_estimates`` of the rows' ``tuned_*`` columns. TP: a
    row whose prediction is correct and whose hit is defined (non-empty ground truth); FP: a wrong one that was
    scored, its IoU taken as 0 (counted only where its finding has a threshold: unscored, an absent finding's pair
    leaves no trace); FN: ``_missed_findings``."""
    record = record or {"source": NOT_TUNED, "reason": "run.json has no localization_thresholds"}
    tuned_groups = record.get("groups", {})
    n = len(samples[Columns.IMAGE_ID])
    if Columns.FINDING in samples:
        finding = samples[Columns.FINDING]
        names = list(dict.fromkeys([*tuned_groups, *sorted(set(finding.tolist()) - {""}), *sorted(_missed_findings(samples))]))
    else:
        names = list(tuned_groups) if len(tuned_groups) == 1 else [SINGLE_GROUP]
        finding = np.full(n, names[0])
    column = lambda metric: np.stack([_column(samples, localization_column(metric, v, contract.TUNED_PREFIX))  # noqa: E731
                                      for v in contract.MAP_VARIANTS], axis=1)
    iou, hit, correct, missed = column("iou"), column("hit"), _column(samples, Columns.CORRECT), _missed_findings(samples)
    scored = np.isfinite(hit).any(axis=1) | np.isfinite(iou).any(axis=1)
    pairs, findings = {}, {}
    for name in names:
        tuned = tuned_groups.get(name, {})
        thresholds = tuned.get("threshold") or {}
        has_threshold = bool(thresholds) and None not in thresholds.values()
        tp = (finding == name) & (correct == 1) & np.isfinite(hit).all(axis=1)
        n_fp = int(((finding == name) & (correct == 0) & scored).sum()) if has_threshold else 0
        pairs[name] = (iou[tp], hit[tp], n_fp, missed[name] if has_threshold else 0, has_threshold)  # without: TP only
        estimates = _pointing_estimates(*pairs[name][:4], n_bootstrap, seed)
        for variant in contract.MAP_VARIANTS:
            estimates[variant] = {"threshold": thresholds.get(variant),
                                  "validation_miou": (tuned.get("validation_miou") or {}).get(variant), **estimates[variant]}
        findings[name] = {"n_tp": int(tp.sum()), "n_fp": n_fp if has_threshold else None, "n_fn": missed[name],
                          "n_validation": tuned.get("n_pairs"), **estimates}
        if not has_threshold:
            findings[name]["note"] = f"{name}: no threshold, mIoU n/a: {tuned.get('reason') or record.get('reason') or NOT_TUNED}."
    pooled = [name for name in names if pairs[name][4]] or names  # without any threshold: the hit rate of every pair
    iou_tp, hit_tp = (np.concatenate([np.empty((0, 2)), *(pairs[name][k] for name in pooled)]) for k in (0, 1))
    n_fp, n_fn = (sum(pairs[name][k] for name in pooled) for k in (2, 3))
    n_missed = sum(missed[name] for name in pooled)
    return {"tuned": bool(tuned_groups), **{key: record[key] for key in ("source", "reason") if key in record},
            "findings": findings,
            "pooled": {"findings": pooled, "n_tp": len(iou_tp), "n_fp": n_fp if tuned_groups else None, "n_fn": n_missed,
                       **_pointing_estimates(iou_tp, hit_tp, n_fp, n_fn, n_bootstrap, seed)}}


def _pointing_section(pointing: dict) -> str:
    """The "cheXlocalize-style localisation" table: per finding and pooled, raw, SegX and their difference."""
    rows = []
    for name, group in [*pointing["findings"].items(), ("Pooled", pointing["pooled"])]:
        counts = " / ".join(fmt(group[key]) for key in ("n_tp", "n_fp", "n_fn"))
        for variant, label in zip(ESTIMATES, ("raw", "SegX", "SegX − raw")):
            entry = group[variant]
            if variant == "difference":
                threshold = ""
            elif name == "Pooled":
                threshold = "per finding" if len(pointing["findings"]) > 1 else "as above"
            elif not pointing["tuned"]:
                threshold = NOT_TUNED
            else:
                threshold = f"{fmt(entry['threshold'])} (validation mIoU {fmt(entry['validation_miou'])}, n {fmt(group['n_validation'])})"
            rows.append([name, label, threshold, counts,
                         *(fmt_estimate(entry[key]["mean"], entry[key]["ci"]) for key in POINTING_METRICS)])
    notes = [f"{NOT_TUNED}: {pointing.get('reason', '')}."] if not pointing["tuned"] else []
    notes += [group["note"] for group in pointing["findings"].values() if "note" in group and pointing["tuned"]]
    return "<h2>cheXlocalize-style localisation</h2>" + render.table(
        ["Finding", "Map", "Threshold (validation mIoU, n TP)", "n TP / FP / FN", *(f"{name} [95% CI]" for name in POINTING_METRICS.values())],
        rows, EXPLAIN["pointing"], notes)


def _regions_larger_than_q(samples: dict[str, np.ndarray], q: float | None) -> dict:
    """How many rows with a known region share (``region_fraction``) have a predicted region larger than ``q``."""
    fraction = _column(samples, Columns.REGION_FRACTION)
    fraction = fraction[np.isfinite(fraction)]
    return {"q": q, "n": len(fraction), "n_larger": None if q is None else int((fraction > q).sum())}


def summarize(samples: dict[str, np.ndarray], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Counts, the raw vs SegX localisation table and the SegU certainty table of a set of rows."""
    return {
        "counts": _count_samples(samples),
        "localization": _compare_localization(samples, n_bootstrap, seed),
        "certainty": _evaluate_certainty(samples, n_bootstrap, seed),
    }


def _curve_areas(curves: dict) -> dict[str, float]:
    """Areas under the mean raw and SegX IoU-threshold curves of ``curves.json`` (trapezoid rule; NaN when absent)."""
    thresholds = _curve(curves, CurveFields.THRESHOLDS)
    return {
        f"area_{kind}": float(torch.trapezoid(_curve(curves, curve_field(kind)), thresholds))
        if curve_field(kind) in curves and len(thresholds) else math.nan
        for kind in contract.MAP_VARIANTS
    }


def _curve(curves: dict, key: str) -> torch.Tensor:
    """One list of ``curves.json`` as a float64 tensor (null entries as NaN), empty when absent."""
    return torch.as_tensor(np.asarray(curves.get(key, []), dtype=float))


def _overlay(samples: dict[str, np.ndarray], overlay_dir: Path, row: int) -> Path:
    """The overlay image of one row, named as the explanation saver names it (with the finding, for multi-label)."""
    finding = samples[Columns.FINDING][row] if Columns.FINDING in samples else None
    return overlay_dir / f"{pair_stem(samples[Columns.IMAGE_ID][row], finding)}.png"


def _select_gallery(samples: dict[str, np.ndarray], overlay_dir: Path, size: int, score: str = Columns.CIOU) -> dict[str, list[int]]:
    """Row indices per gallery section (see ``GALLERY``) among rows with an overlay, one row per image; ``score`` is
    the certainty score that flags for review, which orders the flagged cases (undefined ones last)."""
    ids = samples[Columns.IMAGE_ID]
    has_overlay = np.array([_overlay(samples, overlay_dir, row).is_file() for row in range(len(ids))], dtype=bool)
    iou_segx, ciou, certainty = (_column(samples, name) for name in (GALLERY_IOU, Columns.CIOU, score))
    order_keys = {  # section -> (ascending sort key, which rows may appear)
        "best": (-iou_segx, np.isfinite(iou_segx) & (_column(samples, RAW_IOU) > 0)),
        "worst": (iou_segx, np.isfinite(iou_segx)),
        "outside": (_column(samples, RAW_MASS), np.isfinite(_column(samples, RAW_MASS))),
        "review": (certainty, _column(samples, Columns.REVIEW) == 1),
        "uncertain": (ciou, np.isfinite(ciou)),
    }
    selected = {}
    for section, (key, eligible) in order_keys.items():
        candidates = np.flatnonzero(has_overlay & eligible)
        ranked = candidates[np.argsort(key[candidates], kind="stable")]
        first_of_image = np.sort(np.unique(ids[ranked], return_index=True)[1])
        selected[section] = ranked[first_of_image][:size].tolist()
    return selected


def write_run_info(interpret_dir: str | Path, settings: dict, **extra: object) -> Path:
    """Write the settings of an interpretation run to ``run.json`` beside its outputs, for the report and for audit;
    settings of other explainers than the run's are left out (see ``own_settings``)."""
    path = Path(interpret_dir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(own_settings({**settings, **extra})), indent=1, default=str))
    return path


def own_settings(settings: dict) -> dict:
    """The settings without those that only other explainers than the run's ``explainer`` read
    (``EXPLAINER_SETTINGS``), such as GradientSHAP's draws in a Grad-CAM run."""
    explainer = settings.get("explainer")
    return {key: value for key, value in settings.items() if explainer in EXPLAINER_SETTINGS.get(key, (explainer,))}


def _read_json(path: Path) -> dict:
    """A JSON file's content, empty when the file is missing."""
    return json.loads(path.read_text()) if path.is_file() else {}


def _json_safe(value: object) -> object:
    """``value`` with non-finite floats as None, so that ``summary.json`` is standard JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _notes(results: dict[str, dict]) -> list[str]:
    """The reasons for the n/a values of a table."""
    return [result["note"] for result in results.values() if "note" in result]


def _tables(summary: dict, heading: str) -> str:
    """The counts, raw vs SegX and SegU tables of one summary (the whole run or one finding)."""
    counts = summary["counts"]
    localization, certainty = summary["localization"], summary["certainty"]
    return (
        f"<h2>{heading}: samples</h2>"
        + render.table(["Count", "Value"], [[COUNT_LABELS[k], v] for k, v in counts.items()], EXPLAIN["counts"])
        + f"<h2>{heading}: localisation, raw vs SegX</h2>"
        + render.table(
            ["Metric", "n", "n without mask", "n undefined", "Raw mean [95% CI]", "SegX mean [95% CI]", "SegX − raw [95% CI]"],
            [
                [r["name"], r["n"], r["n_without_mask"], r["n_undefined"], *(fmt_estimate(r[k]["mean"], r[k]["ci"]) for k in ESTIMATES)]
                for r in localization.values()
            ],
            EXPLAIN["localization"], _notes(localization),
        )
        + f"<h2>{heading}: certainty, SegU vs the classifier's confidence</h2>"
        + render.table(
            ["Score", "n correct", "Mean if correct", "n incorrect", "Mean if incorrect", "AUROC [95% CI]",
             "AURC [95% CI]", "AUROC − confidence [95% CI]"],
            [
                [r["name"], r["n_correct"], r["mean_correct"], r["n_incorrect"], r["mean_incorrect"],
                 fmt_estimate(r["auroc"], r["auroc_ci"]), fmt_estimate(r["aurc"], r["aurc_ci"]),
                 fmt_estimate(r.get("auroc_minus_confidence", math.nan), r.get("auroc_minus_confidence_ci", [math.nan] * 2))]
                for r in certainty.values()
            ],
            EXPLAIN["certainty"], _certainty_notes(certainty),
        )
        + render.paragraph(_cap_sentence(summary["regions_larger_than_q"]))
    )


def _certainty_notes(certainty: dict[str, dict]) -> list[str]:
    """The reasons for the n/a values of the certainty table, and how many rows it leaves out."""
    n_left_out = next(iter(certainty.values()), {}).get("n_left_out", 0)
    left_out = [f"Predictions left out for lacking an outcome or one of the scores: {n_left_out} (every score is "
                "judged on the same cases)."] if n_left_out else []
    missing = [] if Columns.CONFIDENCE in certainty else ["AUROC − confidence: n/a, the table has no confidence column."]
    return _notes(certainty) + left_out + missing


def _cap_sentence(regions: dict) -> str:
    """How many predicted regions are larger than q, where cIoU cannot reach 1 whatever the explanation."""
    if regions["q"] is None or not regions["n"]:
        reason = "run.json gives no q" if regions["q"] is None else "no row has a region_fraction"
        return f"Predicted regions larger than q: n/a ({reason})."
    return (
        f"{regions['n_larger']} of {regions['n']} predicted regions cover more than q = {fmt(regions['q'])} of the "
        "image: for them cIoU is capped at q / (region share) whatever the explanation, while cPrecision, "
        "cRelevance mass and cRank accuracy are not."
    )


def _plots(samples: dict[str, np.ndarray], curves: dict, summary: dict) -> str:
    """The AUITC curves, risk-coverage curves and score histograms, or why they are missing."""
    figures, notes = [], []
    areas = summary["auitc_curves"]
    drawn = {"raw": "raw", "segx": "SegX"}
    drawn = {kind: name for kind, name in drawn.items() if math.isfinite(areas[f"area_{kind}"])}
    if drawn:
        thresholds = _curve(curves, CurveFields.THRESHOLDS)
        lines = {
            f"{name} (area {fmt(areas[f'area_{kind}'])})": (thresholds, _curve(curves, curve_field(kind)))
            for kind, name in drawn.items()
        }
        fig = render.line_plot(lines, "threshold τ on the [0, 1]-scaled map", "mean IoU with ground truth", "AUITC")
        figures.append((render.figure_uri(fig), EXPLAIN["auitc_plot"]))
    else:
        notes.append("AUITC curves not drawn: curves.json is missing or has no defined value.")
    scores, correct, _ = _certainty_inputs(samples)
    if scores and len(correct):
        accuracy = float(correct.double().mean())
        risk = {COMPARED_SCORES[key]: risk_coverage_curve(score, correct) for key, score in scores.items()}
        lines = {f"{name} (AURC {fmt(rc.aurc.item())})": (rc.coverage, rc.accuracy) for name, rc in risk.items()}
        fig = render.line_plot(
            lines, "coverage (share of most certain cases kept)", "accuracy", "Risk–coverage",
            reference=(accuracy, f"overall accuracy {fmt(accuracy)}"), legend_loc="lower left",
        )
        figures.append((render.figure_uri(fig), EXPLAIN["risk_coverage_plot"]))
        segu = {CERTAINTY_SCORES[key]: (score, correct) for key, score in scores.items() if key in CERTAINTY_SCORES}
        if segu:
            figures.append((render.figure_uri(render.histogram_plot(segu)), EXPLAIN["histogram_plot"]))
        else:
            notes.append("Score histograms not drawn: the table has no SegU score.")
    else:
        notes.append("Risk–coverage curves and histograms not drawn: no prediction has a SegU score or the "
                     "classifier's confidence, and an outcome.")
    return "<h2>Plots</h2>" + render.figure_row(figures, notes=notes)


def _caption(samples: dict[str, np.ndarray], row: int, score: str = Columns.CIOU) -> str:
    """A gallery caption: id (and finding), label, prediction with its probability, IoU@q and relevance mass of the
    raw and the SegX map, cIoU and the review score ``score``, review flag."""
    finding = f" ({samples[Columns.FINDING][row]})" if Columns.FINDING in samples else ""
    value = {name: fmt(_column(samples, name)[row]) for name in (Columns.PROBABILITY, Columns.CIOU, score)}
    pairs = {
        metric: "raw {} / SegX {}".format(*(fmt(_column(samples, localization_column(metric, kind))[row]) for kind in ("raw", "segx")))
        for metric in ("iou_at_q", "relevance_mass")
    }
    scores = f"cIoU {value[Columns.CIOU]}" + ("" if score == Columns.CIOU else f", {CERTAINTY_SCORES.get(score, score)} {value[score]}")
    review = "yes" if _column(samples, Columns.REVIEW)[row] == 1 else "no"
    return (
        f"{samples[Columns.IMAGE_ID][row]}{finding}: label {_text(samples, Columns.LABEL, row)}, prediction "
        f"{_text(samples, Columns.PREDICTION, row)} (probability {value[Columns.PROBABILITY]}); IoU@q "
        f"{pairs['iou_at_q']}; relevance mass {pairs['relevance_mass']}; {scores}; flagged for review: {review}"
    )


def _scale_sentence(explainer: str | None) -> str:
    """What tops the overlays' colour scale for the run's explainer (see ``segx_monai.handlers.savers``)."""
    percentile = display_percentile(explainer)
    if percentile is None:
        return "The scale's top is the raw map's maximum."
    return (
        f"Display only: for these {explainer} attribution maps the scale's top is the raw map's {percentile:g}th "
        "percentile, and the few pixels above it are shown at the top colour; the saved maps are not clipped."
    )


def _gallery(samples: dict[str, np.ndarray], overlay_dir: Path, selected: dict[str, list[int]], settings: dict) -> str:
    """The gallery sections, one captioned overlay strip per selected row, each panel at least
    ``GALLERY_PANEL_WIDTH`` wide."""
    score, counterfactual = settings.get("certainty_score", Columns.CIOU), settings.get("explainer") == COUNTERFACTUAL
    panels = COUNTERFACTUAL_PANELS if counterfactual else PANELS
    text = f"{EXPLAIN['gallery']} {EXPLAIN['gallery_counterfactual'] if counterfactual else ''} {_scale_sentence(settings.get('explainer'))}"
    body = "<h2>Gallery</h2>" + render.paragraph(" ".join(text.split()))
    for section, rows in selected.items():
        heading, rule = GALLERY[section]
        tiles = [
            (render.image_uri(_overlay(samples, overlay_dir, row), min_width=len(panels) * GALLERY_PANEL_WIDTH),
             _caption(samples, row, score))
            for row in rows
        ]
        body += f"<h3>{heading}</h3>" + render.paragraph(f"Cases with the {rule}.")
        body += render.figure_row(tiles, kind="gallery", notes=[] if tiles else ["No such case has an overlay image."])
    return body


def _counterfactual_section(result: dict, settings: dict) -> str:
    """The "Counterfactual" section from ``counterfactual.json`` (``segx_monai.handlers.counterfactual``): validity,
    weak-segmentation IoU raw and SegX, and the Fréchet distance with the feature space it was measured in."""
    validity, iou, realism = result["validity"], result["weak_segmentation_iou"], result["realism"]
    rows = [
        ["Counterfactual validity", fmt(validity["value"]),
         f"{validity['n_confident']} confidently abnormal of {validity['n_pairs']} predictions",
         f"confidence {fmt(validity['confidence'])} (target probability ≤ {fmt(1 - validity['confidence'])}), "
         f"τ = {fmt(validity['tau'])}"],
        ["Weak segmentation IoU, raw → SegX", f"{fmt(iou['raw']['mean'])} → {fmt(iou['segx']['mean'])}",
         f"{iou['raw']['n']} predictions with a ground-truth mask",
         f"map > {fmt(settings.get('counterfactual_threshold'))}, opening {fmt(settings.get('counterfactual_opening'))}"],
        ["Fréchet distance to real target images", fmt(realism["frechet_distance"]),
         f"{realism['n_real']} real / {realism['n_counterfactual']} counterfactual images", f"features: {realism['features']}"],
    ]
    notes = [part["note"] for part in (validity, iou, realism) if "note" in part]
    target = settings.get("counterfactual_target")
    heading = "<h2>Counterfactual</h2>" + (render.paragraph(f"Target outcome: {target}.") if target else "")
    return heading + render.table(["Measure", "Value", "n", "Settings"], rows, EXPLAIN["counterfactual"], notes)


def build_report(
    interpret_dir: str | Path, title: str = "SegX interpretation report", n_bootstrap: int = 1000, seed: int = 0,
    gallery_size: int = 6,
) -> Path:
    """Write ``report.html`` (self-contained) and ``summary.json`` into an interpretation folder; return the html path.

    ``gallery_size`` cases are shown per gallery section; intervals use ``n_bootstrap`` resamples drawn with ``seed``.
    """
    if n_bootstrap < 1 or gallery_size < 0:
        raise ValueError(f"n_bootstrap must be >= 1 and gallery_size >= 0, got {n_bootstrap} and {gallery_size}.")
    folder = Path(interpret_dir)
    samples = load_samples(folder / "samples.csv")
    settings, curves = own_settings(_read_json(folder / "run.json")), _read_json(folder / "curves.json")
    overlay_dir = folder / "overlays"
    selected = _select_gallery(samples, overlay_dir, gallery_size, settings.get("certainty_score", Columns.CIOU))
    q = settings.get("q")  # the run's top fraction: a larger predicted region caps cIoU below 1
    summary = {
        "title": title,
        "settings": settings,
        "bootstrap": {"n_bootstrap": n_bootstrap, "seed": seed, "level": 0.95},
        **summarize(samples, n_bootstrap, seed),
        "regions_larger_than_q": _regions_larger_than_q(samples, q),
        "review_threshold": _review_threshold(samples, settings),
        "auitc_curves": {"n": curves.get(CurveFields.COUNT), **_curve_areas(curves)},
        "gallery": {section: samples[Columns.IMAGE_ID][rows].tolist() for section, rows in selected.items()},
        "pointing": _pointing(samples, settings.get("localization_thresholds"), n_bootstrap, seed),
    }
    if (folder / "counterfactual.json").is_file():  # written by a counterfactual run
        summary["counterfactual"] = _read_json(folder / "counterfactual.json")
    if Columns.FINDING in samples:
        subsets = {
            finding: {k: v[samples[Columns.FINDING] == finding] for k, v in samples.items()}
            for finding in np.unique(samples[Columns.FINDING]).tolist()
        }
        summary["by_finding"] = {
            finding: {**summarize(rows, n_bootstrap, seed), "regions_larger_than_q": _regions_larger_than_q(rows, q)}
            for finding, rows in subsets.items()
        }
    (folder / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2))

    shown = {key: value.get("source") if key in ("review_calibration", "localization_thresholds") and isinstance(value, dict) else value
             for key, value in settings.items()}  # the calibration's curve is drawn in its own section
    body = "<h2>Settings</h2>" + render.table(
        ["Setting", "Value"], [[key, value] for key, value in shown.items()], EXPLAIN["settings"],
        [] if settings else ["run.json not found: settings unknown."],
    )
    body += _tables(summary, "All predictions") + _plots(samples, curves, summary) + _review_section(summary["review_threshold"])
    body += _pointing_section(summary["pointing"])
    if "counterfactual" in summary:
        body += _counterfactual_section(summary["counterfactual"], settings)
    for finding, finding_summary in summary.get("by_finding", {}).items():
        body += _tables(finding_summary, f"Finding {finding}")
    if (folder / "sanity.json").is_file():  # written when the run's sanity checks were on
        body += sanity_section(_read_json(folder / "sanity.json"))
    body += _gallery(samples, overlay_dir, selected, settings)
    body += render.paragraph(
        f"Intervals: 95% percentile bootstrap over {n_bootstrap} resamples of the predictions (seed {seed}); "
        "n/a marks a value that cannot be computed from these data."
    )
    path = folder / "report.html"
    path.write_text(render.page(title, body), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the report of an interpretation folder and print the path of ``report.html``."""
    parser = argparse.ArgumentParser(prog="python -m segx_monai.report", description=build_report.__doc__)
    parser.add_argument("interpret_dir", type=Path, help="folder with samples.csv, curves.json, run.json, overlays/")
    parser.add_argument("--title", default="SegX interpretation report")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--gallery-size", type=int, default=6, help="cases per gallery section")
    args = parser.parse_args(argv)
    print(build_report(args.interpret_dir, args.title, args.n_bootstrap, args.seed, args.gallery_size))
    return 0
