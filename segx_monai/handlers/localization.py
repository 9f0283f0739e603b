"""Ignite handlers for the localisation metrics, thin adapters in the manner of ``monai.handlers.MeanDice``.

``output_transform`` maps ``engine.state.output`` to ``(y_pred, y)`` = (explanation maps, ground-truth masks).
With ``save_details`` the per-sample scores go to ``engine.state.metric_details[name]``.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from segx_monai.metrics.localization import AUITCMetric, HitRateMetric, IoUAtQMetric, RelevanceMassMetric


class IoUAtQ(IgniteMetricHandler):
    """Mean IoU@q over an epoch (see ``segx_monai.metrics.compute_iou_at_q``); empty ground truths are skipped."""

    def __init__(
        self,
        q: float = 0.05,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = IoUAtQMetric(q=q, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class AUITC(IgniteMetricHandler):
    """Mean AUITC over an epoch (see ``segx_monai.metrics.compute_auitc``); empty ground truths are skipped."""

    def __init__(
        self,
        n_thresholds: int = 101,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = AUITCMetric(n_thresholds=n_thresholds, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class HitRate(IgniteMetricHandler):
    """Pointing-game hit rate over an epoch (see ``segx_monai.metrics.compute_hit``); empty ground truths skipped."""

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = HitRateMetric(reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class RelevanceMass(IgniteMetricHandler):
    """Mean relevance mass over an epoch (``segx_monai.metrics.compute_relevance_mass``); undefined samples skipped."""

    def __init__(
        self,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = RelevanceMassMetric(reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
