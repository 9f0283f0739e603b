"""Ignite handlers for the localisation metrics, thin adapters in the manner of ``monai.handlers.MeanDice``.

:class:`LocalizationScores` scores the raw and the SegX map of each explained pair in an interpretation evaluator.
The single-metric handlers are Ignite metrics (``attach(engine, name)``, e.g. a bundle's ``additional_metrics``):
``output_transform`` maps ``engine.state.output`` to ``(y_pred, y)`` = (explanation maps, ground-truth masks), and
with ``save_details`` the per-sample scores go to ``engine.state.metric_details[name]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.utils import MetricReduction

from segx_monai.core.segu import threshold_curve_and_area
from segx_monai.handlers.contract import (
    DECLARED_SETS,
    LOCALIZATION_METRICS,
    MAP_VARIANTS,
    SET_METRICS,
    CurveFields,
    OutputKeys,
    curve_field,
    localization_column,
)
from segx_monai.handlers.shared import shared_levels, shared_top
from segx_monai.handlers.writers import IterationHandler, item_rows
from segx_monai.metrics.localization import (
    AUITCMetric,
    HitRateMetric,
    IoUAtQMetric,
    IoUThresholdCurveMetric,
    PerSampleScoreMetric,
    RelevanceMassMetric,
)


def pair_masks(batch_item: dict, item: dict, gt_key: str, per_class: bool = False) -> torch.Tensor:
    """The ground truth of each of an output item's explained pairs, ``(P, 1, *spatial)``: the batch item's
    ``gt_key`` ``(1, *spatial)`` repeated, or with ``per_class`` the explained class's channel of ``(K, *spatial)``."""
    gt = torch.as_tensor(batch_item[gt_key]).to(item[OutputKeys.MAP].device)
    if per_class:
        return gt[item[OutputKeys.EXPLAINED_CLASSES]].unsqueeze(1)
    return gt[None].expand(item[OutputKeys.MAP].shape[0], *gt.shape)


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


class LocalizationScores(IterationHandler):
    """IoU@q, AUITC, hit and relevance mass of the raw and the SegX map against a ground-truth mask, per explained pair.

    What each column measures: ``iou_at_q_raw`` the raw map's top fraction ``q``, ``hit_raw`` the raw map's maximum;
    ``iou_at_q_segx`` SegX's binary map (``segx_binary``, the set the chosen variant declares most relevant: the top
    ``q`` of the SegX map for ``rethreshold``, the raw top ``q`` within the region for ``intersect``), ``hit_segx`` the
    SegX map's maximum over that set (0 when it is empty); AUITC and relevance mass, of either map, the continuous map.
    The ground truth ``gt_key`` is read from the batch: ``(1, *spatial)`` for one clinical region, or ``(K, *spatial)``
    with ``per_class`` (one mask per finding, the explained class's channel is used); rows without it get no value.
    Each score goes to its pair's row (columns ``<prefix><metric>_<raw|segx>``, see ``contract``) and into one
    cumulative metric of ``segx_monai.metrics`` per column, whose means over the run (NaN excluded, every rank's pairs
    in a distributed run) go to ``engine.state.metrics``; the mean IoU-threshold curves of both maps go to
    ``curves_path`` (JSON, rank 0). ``prefix`` tells apart the columns of a second ground truth (e.g. the findings'
    own masks beside the lungs).
    """

    def __init__(
        self, gt_key: str = "mask", per_class: bool = False, q: float = 0.05, n_thresholds: int = 101,
        curves_path: str | Path | None = None, prefix: str = "",
    ) -> None:
        self.gt_key, self.per_class, self.curves_path = gt_key, per_class, curves_path
        self.q, self.n_thresholds = q, n_thresholds
        self.requires = (OutputKeys.MAP, OutputKeys.SEGX_MAP, OutputKeys.SEGX_BINARY) + ((OutputKeys.EXPLAINED_CLASSES,) if per_class else ())
        metric_types = {"iou_at_q": partial(IoUAtQMetric, q=q), "auitc": partial(AUITCMetric, n_thresholds=n_thresholds),
                        "hit": HitRateMetric, "relevance_mass": RelevanceMassMetric}
        self.metrics = {
            (variant, metric): metric_types[metric](get_not_nans=True) for variant in MAP_VARIANTS for metric in LOCALIZATION_METRICS
        }
        self.columns = {key: localization_column(key[1], key[0], prefix) for key in self.metrics}
        self.curves = {variant: IoUThresholdCurveMetric(n_thresholds) for variant in MAP_VARIANTS}

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def reset(self, engine: Engine | None = None) -> None:
        for metric in (*self.metrics.values(), *self.curves.values()):
            metric.reset()

    def __call__(self, engine: Engine) -> None:
        pairs = [(b, item) for b, item in self.items(engine) if item[OutputKeys.MAP].shape[0] and self.gt_key in b]
        if not pairs:
            return
        gt = torch.cat([pair_masks(b, item, self.gt_key, self.per_class) for b, item in pairs]) > 0
        explained = [item for _, item in pairs]
        rows = [row for item in explained for row in item_rows(item)]
        for variant, key in MAP_VARIANTS.items():
            maps = torch.cat([item[key] for item in explained])
            if variant in DECLARED_SETS:
                options = dict.fromkeys(SET_METRICS, {"selected": torch.cat([item[DECLARED_SETS[variant]] for item in explained])})
            else:  # IoU@q of the map's own top fraction q, found once per batch (shared_top)
                options = {"iou_at_q": {"selected": shared_top(engine, explained, key, gt, self.q)}}
            levels = shared_levels(engine, explained, key, gt, self.n_thresholds)
            curve, auitc = threshold_curve_and_area(maps, gt, self.n_thresholds, levels)  # one curve: AUITC and the curves
            self.curves[variant].add(curve)
            for metric in LOCALIZATION_METRICS:
                scorer = self.metrics[variant, metric]
                scores = scorer.add(auitc) if metric == "auitc" else scorer(maps, gt, **options.get(metric, {}))
                for row, value in zip(rows, scores[:, 0].tolist()):
                    row[self.columns[variant, metric]] = value

    def finish(self, engine: Engine) -> None:
        """The means over every scored pair (of every rank) to ``engine.state.metrics``; rank 0 writes the curves."""
        for key, metric in self.metrics.items():
            mean, defined = metric.aggregate()
            engine.state.metrics[self.columns[key]] = float(mean) if defined > 0 else math.nan
        curves = {variant: metric.aggregate() for variant, metric in self.curves.items()}
        if self.curves_path is not None and idist.get_rank() == 0:
            Path(self.curves_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.curves_path).write_text(json.dumps({
                CurveFields.THRESHOLDS: next(iter(self.curves.values())).thresholds.tolist(),
                **{curve_field(variant): mean.tolist() for variant, (mean, _) in curves.items()},
                CurveFields.COUNT: min(count for _, count in curves.values()),  # one count: it depends on G alone
            }))
