"""Metrics: localisation of explanations against ground truth, and evaluation of certainty scores."""

from segx_monai.metrics import classification, counterfactual
from segx_monai.metrics.certainty import (
    CorrectnessMeans,
    RiskCoverage,
    correctness_auroc,
    mean_by_correctness,
    risk_coverage_curve,
)
from segx_monai.metrics.localization import (
    AUITCMetric,
    HitRateMetric,
    IoUAtQMetric,
    IoUThresholdCurveMetric,
    PerSampleScoreMetric,
    RelevanceMassMetric,
    compute_auitc,
    compute_hit,
    compute_iou_at_q,
    compute_relevance_mass,
)
from segx_monai.metrics.pointing import chexlocalize_summary, localize, threshold_maps, tune_localization_threshold

__all__ = [
    "classification",
    "counterfactual",
    "AUITCMetric",
    "CorrectnessMeans",
    "HitRateMetric",
    "IoUAtQMetric",
    "IoUThresholdCurveMetric",
    "PerSampleScoreMetric",
    "RelevanceMassMetric",
    "RiskCoverage",
    "compute_auitc",
    "compute_hit",
    "compute_iou_at_q",
    "compute_relevance_mass",
    "chexlocalize_summary",
    "localize",
    "threshold_maps",
    "tune_localization_threshold",
    "correctness_auroc",
    "mean_by_correctness",
    "risk_coverage_curve",
]
