"""The names the evaluator handlers share, declared once: the keys they add to each decollated item of
``engine.state.output`` (with the handler that adds each), the columns of the sample table (``samples.csv`` of an
interpretation, ``predictions.csv`` of an inference) and the fields of ``curves.json``. The report and the MONAI Label
app read the same names from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class OutputKeys:
    """Keys of each output item, in the order the handlers add them (``P``: the item's explained pairs)."""

    IMAGE = "image"  # the evaluator: the network input (C, *spatial)
    PRED = "pred"  # the evaluator: the network output after its postprocessing (class probabilities)
    REGION_PROB = "region_prob"  # (1, *spatial) probability of the clinical region
    MAP = "map"  # (P, 1, *spatial) raw explanation maps
    EXPLAINED_CLASSES = "explained_classes"  # the P explained class indices
    SEGX_MAP = "segx_map"  # (P, 1, *spatial) maps restricted to the region
    SEGX_BINARY = "segx_binary"  # (P, 1, *spatial) boolean: the most relevant pixels within the region
    REGION_MASK = "region_mask"  # (P, 1, *spatial) boolean: the region mask SegX used
    ROWS = "rows"  # P dicts of sample-table columns (one row before an explainer says which classes it explains)
    COUNTERFACTUAL = "counterfactual"  # (P, C, *spatial) counterfactual images, when the explainer makes them


MADE_BY = {
    OutputKeys.IMAGE: "the evaluator (its input batch)",
    OutputKeys.PRED: "the evaluator (its network and postprocessing)",
    OutputKeys.REGION_PROB: "segx_monai.handlers.region.RegionSegmentation",
    OutputKeys.MAP: "segx_monai.handlers.segx.ExplainPredictions",
    OutputKeys.EXPLAINED_CLASSES: "segx_monai.handlers.segx.ExplainPredictions",
    OutputKeys.SEGX_MAP: "segx_monai.handlers.segx.SegXMaps",
    OutputKeys.SEGX_BINARY: "segx_monai.handlers.segx.SegXMaps",
    OutputKeys.REGION_MASK: "segx_monai.handlers.segx.SegXMaps",
    OutputKeys.COUNTERFACTUAL: "segx_monai.handlers.segx.ExplainPredictions with a counterfactual explainer (explainer_name counterfactual)",
}


class Columns:
    """Columns of the sample table: one row per explained (sample, class) pair."""

    IMAGE_ID = "image_id"
    FINDING = "finding"  # multi-label: the explained finding ('' on the one row of an image with none predicted)
    PREDICTION = "prediction"  # single-label: the predicted class
    PROBABILITY = "probability"  # of the predicted class, or of the explained finding
    THRESHOLD = "threshold"  # multi-label: the finding's decision threshold
    PREDICTED_FINDINGS = "predicted_findings"  # multi-label: the findings above their thresholds, ';'-separated
    LABEL = "label"  # the true class, or the true findings ';'-separated
    CORRECT = "correct"  # 1 when the prediction (the explained finding) is right, 0 when wrong
    # the classifier's own certainty, the baseline of SegU. Single-label: the maximum softmax probability and the
    # softmax's entropy (nats); multi-label: the explained finding's margin |p - threshold| and the binary entropy of p
    CONFIDENCE = "confidence"
    ENTROPY = "entropy"  # higher = less certain
    EMPTY_REGION = "empty_region"  # 1 when the segmenter found no region (SegX kept the raw map)
    CIOU = "ciou"  # SegU scores of the raw map against the predicted region M; cIoU and cAUITC as in the paper
    CAUITC = "cauitc"
    CPRECISION = "cprecision"  # share of the map's top fraction q inside M
    CRELEVANCE_MASS = "crelevance_mass"  # share of the map's positive relevance inside M
    CRANK_ACCURACY = "crank_accuracy"  # share of the map's |M| highest pixels inside M
    REGION_FRACTION = "region_fraction"  # M's share of the image: above q, cIoU cannot exceed q / region_fraction
    REVIEW = "review"  # 1 when the chosen SegU score is below the review threshold (or undefined)
    # the probability of a correct prediction given [confidence, the chosen SegU score], by the logistic regression
    # fitted on the validation fold when the review threshold was calibrated (models/review_<explainer>.json)
    COMBINED = "combined"
    # counterfactual runs (segx_monai.handlers.counterfactual): the classifier's probability of the target outcome (the
    # target class; for a target of no finding, 1 - p of the explained finding) on the image and on its counterfactual,
    # and the IoU of the weak segmentation (map > counterfactual_threshold) with the ground truth, as it is and
    # restricted to the region SegX used
    TARGET_PROBABILITY = "target_probability"
    COUNTERFACTUAL_PROBABILITY = "counterfactual_target_probability"
    WEAK_IOU_RAW = "weak_iou_raw"
    WEAK_IOU_SEGX = "weak_iou_segx"
    TEXT = (IMAGE_ID, FINDING, PREDICTION, PREDICTED_FINDINGS, LABEL)  # columns of text, whatever their cells hold


WEAK_IOU = {"raw": Columns.WEAK_IOU_RAW, "segx": Columns.WEAK_IOU_SEGX}  # by map variant, as MAP_VARIANTS
CONFIDENCE_SCORES = (Columns.CONFIDENCE, Columns.ENTROPY)  # the classifier's own certainty, per sample-table row
CERTAINTY_SCORES = (Columns.CIOU, Columns.CAUITC, Columns.CPRECISION, Columns.CRELEVANCE_MASS, Columns.CRANK_ACCURACY)
CERTAINTY_SCORE_NAMES = dict(zip(CERTAINTY_SCORES, ("cIoU", "cAUITC", "cPrecision", "cRelevance mass", "cRank accuracy")))  # as reports name them
LOCALIZATION_METRICS = ("iou_at_q", "auitc", "hit", "relevance_mass")
MAP_VARIANTS = {"raw": OutputKeys.MAP, "segx": OutputKeys.SEGX_MAP}  # the maps that localisation compares
# the set of most relevant pixels a map declares itself (SegX: its variant's binary map), which IoU@q and hit score in
# place of the map's own top q and maximum; a map without one (raw) is scored by its own
DECLARED_SETS = {"segx": OutputKeys.SEGX_BINARY}
SET_METRICS = ("iou_at_q", "hit")
# cheXlocalize-style localisation (segx_monai.handlers.pointing), columns <TUNED_PREFIX><metric>_<raw|segx>: the pointing
# game, and the IoU of the map min-max normalised and thresholded at its finding's threshold tuned on the validation fold
TUNED_METRICS = ("hit", "iou")
TUNED_PREFIX = "tuned_"
SAVED_MAPS = {"raw": OutputKeys.MAP, "segx": OutputKeys.SEGX_MAP, "segx_binary": OutputKeys.SEGX_BINARY}  # see map_stem


def probability_column(class_name: str) -> str:
    """The column of one class's probability."""
    return f"p_{class_name}"


def pair_stem(image_id: object, finding: str | None = None) -> str:
    """``<image_id>`` or ``<image_id>_<finding>``: the file name stem of one explained pair's maps and overlay."""
    return f"{image_id}_{finding.replace(' ', '_')}" if finding else str(image_id)


def map_stem(image_id: object, finding: str | None, kind: str) -> str:
    """``<pair_stem>_<kind>``: the file name stem (``maps/<stem>.nii.gz``, ``.png``) of one pair's ``kind`` of map,
    ``kind`` a name of ``SAVED_MAPS``."""
    if kind not in SAVED_MAPS:
        raise ValueError(f"unknown map kind {kind!r}; expected one of {sorted(SAVED_MAPS)}.")
    return f"{pair_stem(image_id, finding)}_{kind}"


def localization_column(metric: str, variant: str, prefix: str = "") -> str:
    """The column of a localisation ``metric`` of the ``variant`` map; ``prefix`` names a second ground truth."""
    return f"{prefix}{metric}_{variant}"


class CurveFields:
    """Fields of ``curves.json``: the thresholds and how many pairs the mean curves (see ``curve_field``) average."""

    THRESHOLDS = "thresholds"
    COUNT = "n"


def curve_field(variant: str) -> str:
    """The field of ``curves.json`` holding the mean IoU-threshold curve of the ``variant`` map."""
    return f"auitc_curve_{variant}"


class HandlerOrderError(LookupError):
    """An output item lacks a key that a handler reads: the handler that makes it is missing or comes later."""


def check_output(items: Iterable[dict], keys: Sequence[str], handler: object) -> None:
    """Raise :class:`HandlerOrderError` naming the first of ``keys`` that an item lacks and the handler that makes it,
    which must come before ``handler`` in the evaluator's handlers."""
    for item in items:
        for key in keys:
            if key not in item:
                name = type(handler).__name__
                raise HandlerOrderError(
                    f"{name}: the output items have no {key!r}; it is made by {MADE_BY.get(key, 'a handler')}, "
                    f"which must come before {name} in the evaluator's handlers (has {sorted(item)})"
                )
