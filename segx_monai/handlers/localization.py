"""Ignite handlers for the localisation metrics, thin adapters in the manner of ``monai.handlers.MeanDice``.

``output_transform`` maps ``engine.state.output`` to ``(y_pred, y)`` = (explanation maps, ground-truth masks).
With ``save_details`` the per-sample scores go to ``engine.state.metric_details[name]``.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from segx_monai.metrics.localization import AUITCMetric, HitRateMetric, IoUAtQMetric, PerSampleScoreMetric, RelevanceMassMetric


class LocalizationHandler(IgniteMetricHandler):
    """One localisation metric over an epoch; subclasses name the metric, its own options (``q``, ``n_thresholds``)
    pass through as keyword arguments."""

    metric: type[PerSampleScoreMetric]

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        **metric_options,
    ) -> None:
        metric_fn = self.metric(reduction=reduction, **metric_options)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class IoUAtQ(LocalizationHandler):
    """Mean IoU@q (option ``q``, default 0.05) over an epoch (``segx_monai.metrics.compute_iou_at_q``); empty ground truths skipped."""

    metric = IoUAtQMetric


class AUITC(LocalizationHandler):
    """Mean AUITC (option ``n_thresholds``, default 101) over an epoch (``segx_monai.metrics.compute_auitc``); empty ground truths skipped."""

    metric = AUITCMetric


class HitRate(LocalizationHandler):
    """Pointing-game hit rate over an epoch (``segx_monai.metrics.compute_hit``); empty ground truths skipped."""

    metric = HitRateMetric


class RelevanceMass(LocalizationHandler):
    """Mean relevance mass over an epoch (``segx_monai.metrics.compute_relevance_mass``); undefined samples skipped."""

    metric = RelevanceMassMetric
