"""Plain vs segmentation-guided classifier, side by side, on the ordinary test fold and on one where the shortcut breaks.

For one bundle: trains a plain DenseNet121 and one guided classifier per ``--weights`` value (each in its own bundle
root under ``--work``, on the same data and split, with the bundle's trained segmenter copied in), calibrates each
on the validation fold and chooses the weight there (``segx_monai.report.guidance.choose_guidance``: the most
relevance inside the region among the guided classifiers whose validation selection score is within a tolerance of
the plain one's; the test folds are never used to choose), then evaluates and interprets (raw Grad-CAM, review
threshold calibrated on validation) every classifier on the ordinary test fold and on ``--reversed`` (the same
layout, artefact-class association reversed), and prints one table: AUROC, balanced accuracy, the raw maps' IoU@q,
relevance mass and precision inside the region, the share flagged for review by SegU, and training time; the same
table goes to ``<work>/<bundle>_guidance.json`` and ``.html``. The demo data, reversed set and segmenter are made
where missing (as scripts/demo.sh makes them), e.g.::

    python benchmarks/bench_guidance.py ham_segx --weights 1 10
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from segx_monai.report.guidance import MASS, SCORE, SCORE_TOLERANCE, choose_guidance, comparison_rows, write_guidance_report

REPO = Path(__file__).resolve().parents[1]


def bundle_run(bundle: str, root: Path, run_id: str, configs: list[str], *overrides: str) -> str:
    """One ``python -m monai.bundle run`` of the bundle's configs with ``root`` as bundle root; its output, or exit."""
    config_dir = REPO / "bundles" / bundle / "configs"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--bundle_root", str(root),
               "--config_file", str([str(config_dir / c) for c in configs]), *overrides]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)}\nfailed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def read_metrics(path: Path) -> dict[str, float]:
    """The scalar rows (no class) of an evaluation's metrics.csv."""
    with open(path, newline="") as f:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(f) if not row.get("class")}


def sample_means(path: Path, columns: dict[str, str]) -> dict[str, float]:
    """Means over the explained rows of an interpretation's samples.csv (empty cells left out)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    means = {}
    for name, column in columns.items():
        values = [float(r[column]) for r in rows if r.get(column) not in (None, "", "nan")]
        means[name] = float(np.mean(values)) if values else float("nan")
    return means


GENERATORS = {"ham_segx": ("segx_monai.data.synthetic_derm", ["--n-images", "140"]),
              "chestx_segx": ("segx_monai.data.synthetic_chest", ["--n-test", "80", "--no-dicom"])}


def prepare_demo(bundle: str, dataset: Path, reversed_set: Path, segmenter: Path) -> None:
    """The demo's data set, reversed test set (as scripts/demo.sh writes them) and segmenter, where missing."""
    module, reversed_options = GENERATORS[bundle]
    for folder, options in ((dataset, []), (reversed_set, ["--reversed", "--seed", "1", *reversed_options])):
        if not folder.is_dir():
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run([sys.executable, "-m", module, "--out", str(partial), *options], cwd=REPO, check=True)
            partial.replace(folder)
    if not segmenter.is_file():
        bundle_run(bundle, segmenter.parent.parent, "training", ["inference.yaml", "train_segmenter.yaml"], "--dataset_dir", str(dataset), "--max_epochs", "5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", nargs="?", default="ham_segx", choices=["ham_segx", "chestx_segx"])
    parser.add_argument("--reversed", type=Path, help="the shortcut-reversed test set (same layout); default: the bundle's data/reversed")
    parser.add_argument("--dataset-dir", type=Path, help="default: the bundle's data/synthetic")
    parser.add_argument("--segmenter", type=Path, help="default: the bundle's models/segmenter.pt")
    parser.add_argument("--work", type=Path, default=Path("/tmp/segx_guidance"))
    parser.add_argument("--method", default="gradcam", choices=["input_gradient", "gradcam"])
    parser.add_argument("--region", default="ground_truth", choices=["ground_truth", "segmenter"])
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=SCORE_TOLERANCE,
                        help="how far below the plain classifier's validation selection score a guided one may be chosen")
    args = parser.parse_args()

    bundle_dir = REPO / "bundles" / args.bundle
    dataset = (args.dataset_dir or bundle_dir / "data" / "synthetic").resolve()
    segmenter = (args.segmenter or bundle_dir / "models" / "segmenter.pt").resolve()
    args.reversed = args.reversed or bundle_dir / "data" / "reversed"
    prepare_demo(args.bundle, dataset, args.reversed, segmenter)
    # the raw maps against the true region (the lesion, the lungs) and the predicted one (cprecision, SegU's review)
    columns = {"IoU@q": "iou_at_q_raw", "relevance mass": "relevance_mass_raw",
               "precision (top q in region)": "cprecision", "flagged": "review"}
    variants = {"plain": []} | {f"{args.method} w={w:g}": ["--guidance", args.method, "--guidance_weight", str(w),
                                                         "--guidance_region", args.region] for w in args.weights}
    results, validation = {}, {}
    common = ["--dataset_dir", str(dataset)]
    for name, guidance in variants.items():
        root = args.work / args.bundle / re.sub(r"[^a-z0-9.]+", "_", name)
        train = ["inference.yaml", "train_classifier.yaml"]
        trained = root / "training.json"  # a finished training's time and score: a rerun skips it
        if not trained.is_file():
            shutil.rmtree(root, ignore_errors=True)
            (root / "models").mkdir(parents=True)
            shutil.copy(segmenter, root / "models" / "segmenter.pt")
            start = time.perf_counter()
            log = bundle_run(args.bundle, root, "training", train, *common, "--max_epochs", str(args.max_epochs), *guidance)
            seconds = time.perf_counter() - start
            score = float(re.findall(r"best validation \S+ ([-0-9.e]+) at epoch", log)[-1])
            trained.with_suffix(".partial").write_text(json.dumps({"seconds": seconds, "score": score}))
            trained.with_suffix(".partial").replace(trained)
        record = json.loads(trained.read_text())
        interpret = ["inference.yaml", "interpret.yaml"]
        calibrated = root / "calibrate" / "validation"
        bundle_run(args.bundle, root, "calibrating", [*interpret, "calibrate.yaml"], *common, "--sanity_checks", "False",
                   "--calibrate_dir", str(calibrated))
        validation[name] = {SCORE: record["score"],
                            MASS: sample_means(calibrated / "samples.csv", {MASS: columns["relevance mass"]})[MASS]}
        row = {"training s": record["seconds"]}
        for fold, test in (("test", []), ("reversed", ["--test_dataset_dir", str(args.reversed.resolve())])):
            eval_dir = ["--eval_dir", str(root / "eval" / fold)]
            bundle_run(args.bundle, root, "evaluating", [*train, "evaluate.yaml"], *common, *test, *eval_dir)
            metrics = read_metrics(root / "eval" / fold / "metrics.csv")
            row[f"{fold} AUROC"] = metrics["test_macro_auroc"]
            row[f"{fold} balanced acc"] = metrics.get("test_balanced_accuracy", float("nan"))
            interpret_dir = root / "interpret" / fold
            bundle_run(args.bundle, root, "interpreting", interpret, *common, *test, *eval_dir, "--sanity_checks", "False",
                       "--interpret_dir", str(interpret_dir))
            for metric, value in sample_means(interpret_dir / "samples.csv", columns).items():
                row[f"{fold} {metric}"] = value
        results[name] = row
        print(f"{name}: {json.dumps(validation[name] | row)}", flush=True)

    chosen = choose_guidance(validation, args.tolerance)
    plain_s = results["plain"]["training s"]
    for row in results.values():
        row["training time ratio"] = row["training s"] / plain_s
    print(f"\n{args.bundle}, {args.method} guidance from {args.region}; chosen on validation: {chosen} "
          f"({MASS} {validation[chosen][MASS]:.3f}, {SCORE} {validation[chosen][SCORE]:.3f})\n")
    settings = {"bundle": args.bundle, "method": args.method, "region": args.region, "max_epochs": args.max_epochs,
                "weights": args.weights, "reversed": str(args.reversed)}
    comparison = {"settings": settings, "tolerance": args.tolerance, "chosen": chosen, "validation": validation,
                  "variants": results}
    names, validation_rows, test_rows = comparison_rows(comparison)
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in [*validation_rows, *test_rows]:
        print(f"| {row[0]} | " + " | ".join(f"{v:.3f}" for v in row[1:]) + " |")
    page = write_guidance_report(args.work / f"{args.bundle}_guidance.json", comparison)
    print(page)


if __name__ == "__main__":
    main()
