"""One table comparing a bundle's interpretation runs (classifiers and explainers, each raw and with SegX) on the same
test fold: localisation against the ground truth and each classifier's test AUROC, as ``interpret/comparison.html``
and ``interpret/comparison.json``.

``python -m segx_monai.report.comparison <bundle_root>`` reads every ``interpret/<run>/`` folder that has a report
(``summary.json``, ``samples.csv``, ``run.json``); a run folder without them is listed as not compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from segx_monai.handlers.contract import localization_column
from segx_monai.report import render
from segx_monai.report.interpretation import _column, _json_safe, _means_with_intervals, load_samples
from segx_monai.report.render import fmt_estimate
from segx_monai.utils.staging import write_text_atomic

VARIANTS = {"raw": "raw", "segx": "SegX"}
MAP_METRICS = {"iou_at_q": "IoU@q", "auitc": "AUITC"}  # per pair, from the sample table
FINDING_PREFIX = "finding_"  # multi-label bundles score maps against each finding's own mask (see interpret.yaml)
AUROC_METRIC = "test_macro_auroc"  # the evaluate workflow's key metric, in its metrics.csv


def run_label(settings: dict) -> str:
    """A run's name in the table: classifier, explainer and what distinguishes the explainer's runs."""
    explainer = settings.get("explainer", "?")
    detail = {"patch_logits": settings.get("patch_map"), "gradcam": settings.get("gradcam_layer"),
              "gradcampp": settings.get("gradcam_layer"), "eigencam": settings.get("gradcam_layer"),
              "counterfactual": settings.get("counterfactual_target") and f"target {settings['counterfactual_target']}"}.get(explainer)
    return f"{settings.get('classifier', '?')} + {explainer}" + (f" ({detail})" if detail else "")


def classifier_auroc(metrics_file: str | None) -> float:
    """The test macro AUROC the evaluate workflow wrote, NaN when it has not run."""
    if not metrics_file or not Path(metrics_file).is_file():
        return math.nan
    with open(metrics_file, newline="") as file:
        values = [float(row["value"]) for row in csv.DictReader(file) if row["metric"] == AUROC_METRIC and not row["class"]]
    return values[0] if values else math.nan


def map_metrics(samples: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> dict[str, dict]:
    """Mean IoU@q and AUITC of the raw and SegX maps against the ground truth (each finding's mask when the table
    has them, else the clinical region's), with bootstrap intervals, over the pairs that have both values."""
    prefix = FINDING_PREFIX if localization_column("iou_at_q", "raw", FINDING_PREFIX) in samples else ""
    results = {}
    for key in MAP_METRICS:
        raw, segx = (_column(samples, localization_column(key, v, prefix)) for v in VARIANTS)
        used = np.isfinite(raw) & np.isfinite(segx)
        estimates = _means_with_intervals(np.stack([raw[used], segx[used]], axis=1), n_bootstrap, seed)
        results[key] = {"n": int(used.sum()), **dict(zip(VARIANTS, estimates))}
    results["ground_truth"] = "finding masks" if prefix else "clinical region"
    return results


def compare_runs(bundle_root: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The comparison of every reported run under ``<bundle_root>/interpret``, and the folders left out and why."""
    interpret = Path(bundle_root) / "interpret"
    if not interpret.is_dir():
        raise FileNotFoundError(f"{interpret}: no interpretation runs to compare; run the `interpreting` workflow first.")
    runs, left_out = {}, {}
    for folder in sorted(p for p in interpret.iterdir() if p.is_dir()):
        missing = [name for name in ("summary.json", "samples.csv", "run.json") if not (folder / name).is_file()]
        if missing:
            left_out[folder.name] = f"no {', '.join(missing)} (the run did not finish)"
            continue
        settings = json.loads((folder / "run.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        runs[folder.name] = {
            "label": run_label(settings), "classifier": settings.get("classifier"), "explainer": settings.get("explainer"),
            "segx_variant": settings.get("segx_variant"), "classifier_auroc": classifier_auroc(settings.get("classifier_metrics")),
            "maps": map_metrics(load_samples(folder / "samples.csv"), n_bootstrap, seed),
            "pointing": summary.get("pointing", {}).get("pooled"),
        }
    if not runs:
        raise FileNotFoundError(f"{interpret}: no finished interpretation run (a folder with summary.json); {left_out}")
    return {"runs": runs, "left_out": left_out, "bootstrap": {"n_bootstrap": n_bootstrap, "seed": seed, "level": 0.95}}


def _cells(run: dict, variant: str) -> list[str]:
    pointing = (run["pointing"] or {}).get(variant) or {}
    estimate = lambda entry: fmt_estimate(entry.get("mean", math.nan), entry.get("ci", [math.nan] * 2))  # noqa: E731
    return [estimate(pointing.get(k, {})) for k in ("hit_rate", "miou_all", "miou_tp")] + [
        fmt_estimate(run["maps"][k][variant]["mean"], run["maps"][k][variant]["ci"]) for k in MAP_METRICS]


def comparison_html(comparison: dict) -> str:
    """The comparison as an offline HTML page."""
    rows = [[run["label"], VARIANTS[variant], run["classifier_auroc"], *_cells(run, variant)]
            for run in comparison["runs"].values() for variant in VARIANTS]
    truth = sorted({run["maps"]["ground_truth"] for run in comparison["runs"].values()})
    body = render.table(
        ["Run", "Map", "Classifier AUROC (test)", "Hit rate", "mIoU (TP+FP+FN)", "mIoU (TP)", *MAP_METRICS.values()],
        rows,
        "Every run on the same test fold, its classifier's map raw and restricted to the segmented region (SegX). Hit "
        "rate (pointing game), mIoU over true positives, false positives and false negatives, and mIoU over true "
        "positives only use each run's map thresholds tuned on the validation fold (the `calibrating` workflow); "
        f"IoU@q and AUITC are against the {' / '.join(truth)}. Brackets: 95% bootstrap intervals over the pairs "
        f"({comparison['bootstrap']['n_bootstrap']} resamples).",
        [f"{name}: not compared, {why}." for name, why in comparison["left_out"].items()],
    )
    return render.page("Comparison of explanations", body)


def write_comparison(bundle_root: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> Path:
    """Write ``comparison.json`` and ``comparison.html`` into ``<bundle_root>/interpret``; return the html's path."""
    comparison = compare_runs(bundle_root, n_bootstrap, seed)
    folder = Path(bundle_root) / "interpret"
    write_text_atomic(folder / "comparison.json", json.dumps(_json_safe(comparison), indent=1))
    write_text_atomic(folder / "comparison.html", comparison_html(comparison))
    return folder / "comparison.html"


def main(argv: list[str] | None = None) -> int:
    """Command line: compare a bundle's interpretation runs and print the page's path."""
    parser = argparse.ArgumentParser(prog="python -m segx_monai.report.comparison", description=compare_runs.__doc__)
    parser.add_argument("bundle_root", type=Path, help="the bundle folder, whose interpret/ holds the runs")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_comparison(args.bundle_root, args.n_bootstrap, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
