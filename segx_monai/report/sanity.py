"""The sanity-check section of the interpretation report, from ``sanity.json`` (``segx_monai.handlers.sanity``):
model-parameter randomisation and deletion / insertion, for raw and SegX maps, with what they say in plain sentences."""

from __future__ import annotations

import math

from segx_monai.handlers.contract import CERTAINTY_SCORE_NAMES
from segx_monai.report import render
from segx_monai.report.render import fmt

SPEARMAN_BOUND = 0.5  # maps still depend on the model when, at full randomisation, their rank correlation is below this
MAP_NAMES = {"raw": "raw", "segx": "SegX"}
MAP_KINDS = tuple(MAP_NAMES)
SIMILARITIES = {  # (map kind, similarity) -> its name in the table and the plot
    ("raw", "spearman"): "Spearman raw", ("raw", "ssim"): "SSIM raw", ("segx", "spearman"): "Spearman SegX",
    ("segx", "ssim"): "SSIM SegX", ("segx", "spearman_in_region"): "Spearman SegX in region",
}
EXPLAIN = {
    "cascade": "Model-parameter randomisation (Adebayo et al. 2018): the classifier's layers are re-initialised one "
    "after another from the output down, and the maps of each randomised classifier are compared with the trained "
    "classifier's maps of the same images and classes. Spearman: rank correlation of the pixels (1 = same order); "
    "SSIM: structural similarity of the [0, 1]-scaled maps (1 = identical). A map that explains the model must change "
    "when the model does: low values are what a faithful explanation gives. Whole SegX maps are 0 outside the "
    "predicted region for every classifier, which alone makes them alike; the in-region column compares only the "
    "pixels inside the region. n: pairs with a defined value (Spearman is undefined for a constant map).",
    "segu": "SegU scores of the randomised classifier's raw maps with the same predicted regions: if they stay as high "
    "as the trained classifier's, SegU does not tell a broken model from a working one.",
    "cascade_plot": "Mean similarity to the trained classifier's maps as more layers are re-initialised (output layer "
    "first); 0 on the horizontal axis is the trained classifier.",
    "deletion": "Deletion and insertion (Petsiuk et al. 2018): the trained classifier's probability of the explained "
    "class as the pixels each map ranks first are replaced by the image mean (deletion; lower area = the map finds the "
    "evidence first) or put back into a blurred image (insertion; higher area = the map finds the evidence first). "
    "Pixels tied in a map (SegX maps are zero outside the region) are taken in raster order. Brackets hold 95% "
    "bootstrap intervals over the explained pairs; the last column pairs each case's SegX and raw maps.",
    "deletion_plot": "Mean probability of the explained class as the top-ranked share of pixels is removed.",
    "insertion_plot": "Mean probability of the explained class as the top-ranked share of pixels is revealed.",
}


def _estimate(estimate: dict | None) -> str:
    """``mean [low, high]`` of a ``mean_interval`` dict (None for undefined values)."""
    if not estimate or estimate["mean"] is None:
        return "n/a"
    low, high = (math.nan if v is None else v for v in estimate["ci"])
    return render.fmt_estimate(estimate["mean"], [low, high])


def _upper(estimate: dict) -> float:
    """The interval's upper end, or the mean when there is no interval (NaN when undefined)."""
    value = estimate["ci"][1] if estimate["ci"][1] is not None else estimate["mean"]
    return math.nan if value is None else value


def _dependence_sentence(name: str, spearman: dict, layer: str) -> str:
    """Whether ``name`` maps still depend on the model, from their Spearman correlation at full randomisation."""
    where = (f"with every listed layer re-initialised (down to {layer}) their rank correlation with the trained maps is "
             f"{_estimate(spearman)}")
    upper = _upper(spearman)
    if math.isnan(upper):
        return f"Whether {name} maps depend on the model cannot be told: {where} (every randomised map was constant)."
    if upper < SPEARMAN_BOUND:
        return f"{name} maps depend on the model: {where}, below {fmt(SPEARMAN_BOUND)}."
    return (f"{name} maps may not depend on the model: {where}, not below {fmt(SPEARMAN_BOUND)}, so a similar map would "
            "be shown whatever the classifier learnt.")


def _evidence_sentence(test: str, difference: dict) -> str:
    """What the paired SegX − raw AUC of ``test`` says about SegX keeping the evidence the model uses."""
    value = _estimate(difference)
    low, high = ((math.nan if v is None else v) for v in difference["ci"])
    better, worse = ("below", "above") if test == "deletion" else ("above", "below")
    what = f"{test.capitalize()} AUC, SegX − raw: {value}."
    if math.isnan(low):
        return f"{what} Too few pairs to tell whether SegX keeps the evidence the model uses."
    if low <= 0 <= high:
        return f"{what} The interval contains 0: SegX keeps the evidence the model uses as well as the raw map does."
    if (high < 0) == (better == "below"):
        return f"{what} The interval lies {better} 0: SegX ranks the evidence the model uses first, sooner than the raw map."
    return (f"{what} The interval lies {worse} 0: SegX ranks the model's evidence later than the raw map, so part of "
            "the evidence the model uses lies outside the segmented region, where SegX sets the map to 0.")


def _cascade_plot(sanity: dict) -> str:
    """Spearman and SSIM of raw and SegX maps against the share of the cascade re-initialised, as a data URI."""
    steps = sanity["cascade"]
    x = [0.0] + [step["step"] / len(steps) for step in steps]
    lines = {}
    for (kind, metric), name in SIMILARITIES.items():
        means = [step["similarity"][kind][metric]["mean"] for step in steps]
        lines[name] = (x, [1.0] + [math.nan if m is None else m for m in means])
    fig = render.line_plot(lines, "share of layers re-initialised (output layer first)", "similarity to the trained maps",
                           "Model-parameter randomisation")
    lowest = min((v for _, ys in lines.values() for v in ys if not math.isnan(v)), default=0.0)
    fig.axes[0].set_ylim(min(0.0, lowest) - 0.05, 1.05)  # Spearman can fall below 0
    return render.figure_uri(fig)


def _curve_plot(sanity: dict, test: str) -> str:
    """The mean deletion or insertion curves of raw and SegX maps, as a data URI."""
    result = sanity[test]
    lines = {f"{MAP_NAMES[kind]} (AUC {fmt(result[kind]['auc']['mean'])})": (result["fractions"], result[kind]["curve"])
             for kind in MAP_KINDS}
    verb = "removed" if test == "deletion" else "revealed"
    fig = render.line_plot(lines, f"share of pixels {verb}, most relevant first", "probability of the explained class",
                           test.capitalize())
    return render.figure_uri(fig)


def sanity_section(sanity: dict) -> str:
    """The report's sanity-check section: cascade and deletion/insertion tables, their plots, and what they show."""
    body = "<h2>Sanity checks: model-parameter randomisation</h2>"
    if not sanity.get("n_pairs"):
        return body + render.paragraph("No explained prediction was kept, so the sanity checks were not run.")
    steps = sanity["cascade"]
    body += render.table(
        ["Step", "Re-initialised down to", *(f"{name} [95% CI]" for name in SIMILARITIES.values()),
         "n (Spearman raw / SegX / in region)"],
        [[s["step"], s["layer"], *(_estimate(s["similarity"][k][m]) for k, m in SIMILARITIES),
          " / ".join(str(s["similarity"][k][m]["n"]) for k, m in SIMILARITIES if m != "ssim")] for s in steps],
        EXPLAIN["cascade"],
    )
    body += render.table(
        ["Classifier", *CERTAINTY_SCORE_NAMES.values()],
        [["trained", *(_estimate(sanity["trained_segu"][key]) for key in CERTAINTY_SCORE_NAMES)]]
        + [[f"step {s['step']} ({s['layer']})", *(_estimate(s["segu"][key]) for key in CERTAINTY_SCORE_NAMES)] for s in steps],
        EXPLAIN["segu"],
    )
    body += render.figure_row([(_cascade_plot(sanity), EXPLAIN["cascade_plot"])])
    last = steps[-1]
    body += "".join(render.paragraph(_dependence_sentence(name, last["similarity"][kind][metric], last["layer"]))
                    for name, kind, metric in (("Raw", "raw", "spearman"), ("Whole SegX", "segx", "spearman"),
                                               ("In-region SegX", "segx", "spearman_in_region")))

    body += "<h2>Sanity checks: deletion and insertion</h2>"
    body += render.table(
        ["Test", "Raw AUC [95% CI]", "SegX AUC [95% CI]", "SegX − raw [95% CI]", "n"],
        [[test.capitalize(), _estimate(sanity[test]["raw"]["auc"]), _estimate(sanity[test]["segx"]["auc"]),
          _estimate(sanity[test]["difference"]), sanity[test]["difference"]["n"]] for test in ("deletion", "insertion")],
        EXPLAIN["deletion"],
    )
    body += render.figure_row([(_curve_plot(sanity, test), EXPLAIN[f"{test}_plot"]) for test in ("deletion", "insertion")])
    body += "".join(render.paragraph(_evidence_sentence(test, sanity[test]["difference"])) for test in ("deletion", "insertion"))
    settings = sanity["settings"]
    return body + render.paragraph(
        f"Settings: the first {sanity['n_pairs']} explained predictions (of at most {settings['n_samples']}); "
        f"{settings['n_steps']} deletion/insertion steps; layers re-initialised with seed {settings['seed']}; intervals "
        f"from {settings['n_bootstrap']} bootstrap resamples."
    )
