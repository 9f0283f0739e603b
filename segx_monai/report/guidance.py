"""Plain vs segmentation-guided classifiers side by side on the ordinary and the shortcut-reversed test folds, with the
guidance weight chosen on the validation fold, as an offline HTML page (``benchmarks/bench_guidance.py`` measures it).

``python -m segx_monai.report.guidance <comparison.json>`` writes the page next to the json.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

from segx_monai.report import render
from segx_monai.utils.staging import write_text_atomic

PLAIN = "plain"
SCORE, MASS = "validation score", "validation relevance mass"  # the two validation figures the choice reads
SCORE_TOLERANCE = 0.02


def choose_guidance(validation: Mapping[str, Mapping[str, float]], tolerance: float = SCORE_TOLERANCE) -> str:
    """The guided variant whose raw maps put the most relevance inside the region on the validation fold, among those
    whose validation selection score is at most ``tolerance`` below the plain classifier's; ``"plain"`` when none is.

    The selection score alone cannot choose: the validation fold shares the training fold's shortcut, so a classifier
    that reads the shortcut scores as well there (it saturates at 1 on the built-in sets).
    """
    if PLAIN not in validation:
        raise KeyError(f"validation figures: no {PLAIN!r} entry to compare the guided classifiers with; got {sorted(validation)}")
    floor = validation[PLAIN][SCORE] - tolerance
    eligible = {name: figures[MASS] for name, figures in validation.items()
                if name != PLAIN and figures[SCORE] >= floor and not math.isnan(figures[MASS])}
    return max(eligible, key=eligible.get) if eligible else PLAIN


DROPS = ("AUROC", "balanced acc")  # figures whose fall from the ordinary to the reversed test fold is shown


def comparison_rows(comparison: Mapping) -> tuple[list[str], list[list], list[list]]:
    """The column names (variants), the validation rows and the test rows (each variant's figures, then the fall of
    AUROC and balanced accuracy from the ordinary to the reversed test fold): what the page and the benchmark print."""
    names = list(comparison["variants"])
    variants = comparison["variants"]
    validation = [[figure, *(comparison["validation"][n][figure] for n in names)] for figure in (SCORE, MASS)]
    rows = [[metric, *(variants[n].get(metric, math.nan) for n in names)] for metric in variants[PLAIN]]
    rows += [[f"{metric} drop, test to reversed",
              *(variants[n].get(f"test {metric}", math.nan) - variants[n].get(f"reversed {metric}", math.nan) for n in names)]
             for metric in DROPS]
    return names, validation, rows


def guidance_html(comparison: Mapping) -> str:
    """The comparison (``variants``: name → figures; ``chosen``; ``validation``; ``settings``) as an offline HTML page."""
    names, validation, rows = comparison_rows(comparison)
    settings = comparison["settings"]
    header = ["Metric", *(f"{n} (chosen)" if n == comparison["chosen"] else n for n in names)]
    body = render.paragraph(
        f"{settings['bundle']}: a plain classifier and classifiers trained with {settings['method']} guidance (weight w) "
        f"from the {settings['region'].replace('_', ' ')} region, on the same data and split, "
        f"{settings['max_epochs']} epochs each.")
    body += "<h2>Choice on the validation fold</h2>" + render.table(
        header, validation,
        f"The chosen weight is the guided classifier whose raw maps put the most relevance inside the region on the "
        f"validation fold, among those whose validation selection score is at most {comparison['tolerance']} below the "
        f"plain classifier's (plain when none is). No test fold takes part in the choice.")
    body += "<h2>Test folds</h2>" + render.table(
        header, rows,
        "“test”: the ordinary test fold, where artefacts go with the class as in training; “reversed”: a test set of "
        "the same layout where that association is reversed, so a classifier that reads the artefact loses accuracy "
        "there. Localisation is of the raw maps (no SegX) against the ground-truth region; precision is the share of "
        "the map's top fraction inside the predicted region; flagged is the share SegU sends to review at the threshold "
        "calibrated on validation.")
    return render.page("Segmentation-guided training", body)


def write_guidance_report(path: str | Path, comparison: Mapping) -> Path:
    """Write the comparison as ``path`` (json) and the page beside it (``.html``), each atomically; the page's path."""
    path = Path(path)
    write_text_atomic(path, json.dumps(comparison, indent=1))
    write_text_atomic(path.with_suffix(".html"), guidance_html(comparison))
    return path.with_suffix(".html")


def main(argv: list[str] | None = None) -> int:
    """Command line: render a saved comparison json as its page."""
    parser = argparse.ArgumentParser(prog="python -m segx_monai.report.guidance", description=__doc__.split("\n")[0])
    parser.add_argument("comparison", type=Path)
    args = parser.parse_args(argv)
    comparison = json.loads(args.comparison.read_text())
    html_path = args.comparison.with_suffix(".html")
    write_text_atomic(html_path, guidance_html(comparison))
    print(html_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
