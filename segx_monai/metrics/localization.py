"""Interpretability metrics: how well explanation maps localise the ground-truth clinical region G (METHOD.md §4).

Plain batched functions ``compute_*`` (maps and G as ``(B, 1, *spatial)``, result ``(B,)``) and cumulative MONAI
metrics over them. A sample with an empty G is undefined (NaN) for every metric and is skipped by ``aggregate``.
IoU@q, AUITC and relevance mass are the SegU formulas (``segx_monai.core.segu``) applied to G instead of the predicted
mask.
IoU@q and hit also take ``selected``: the set of pixels a method declares most relevant itself (SegX's binary map),
scored in place of the map's own top fraction ``q`` and of its maximum over all pixels.
In a distributed run ``aggregate`` covers the samples of every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, evenly_divisible_all_gather

from segx_monai.core.maps import minmax_normalize
from segx_monai.core.segu import (
    iou, relevance_mass, threshold_curve_area, threshold_curve_iou, threshold_grid, top_fraction_iou,
)
from segx_monai.core.segx import align_map_to_mask


def _undefined_where_empty(scores: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Set the scores of samples with an empty ground truth to NaN."""
    return scores.where(gt.flatten(1).bool().any(dim=1), float("nan"))


def _check_selected(selected: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``selected`` as a boolean batch, after checking that it lies on G's grid (a set of pixels is not resampled)."""
    if selected.shape != gt.shape:
        raise ValueError(f"selected must have the ground truth's shape {tuple(gt.shape)}, got {tuple(selected.shape)}.")
    return selected.bool()


def compute_iou_at_q(maps: torch.Tensor, gt: torch.Tensor, q: float = 0.05, selected: torch.Tensor | None = None) -> torch.Tensor:
    """IoU@q (paper Eq. 11): IoU of each map's top fraction ``q`` with G, ``(B,)``; NaN where G is empty.

    With ``selected`` (boolean, G's shape) it is the IoU of ``selected`` with G, and ``maps`` and ``q`` are unused:
    SegX's binary map is its variant's own top-``q`` set, which for ``intersect`` is not the top ``q`` of the SegX
    map. An empty ``selected`` scores 0.
    """
    return top_fraction_iou(maps, gt, q) if selected is None else iou(_check_selected(selected, gt), gt)


def compute_auitc(maps: torch.Tensor, gt: torch.Tensor, n_thresholds: int = 101) -> torch.Tensor:
    """AUITC (paper Eq. 12): trapezoid area under IoU(1[E_n >= t], G) on ``linspace(0, 1, n_thresholds)``, ``(B,)``.

    E_n is the per-sample min-max normalised map; NaN where G is empty. See ``threshold_curve_area``.
    """
    return threshold_curve_area(maps, gt, n_thresholds)


def compute_hit(maps: torch.Tensor, gt: torch.Tensor, selected: torch.Tensor | None = None) -> torch.Tensor:
    """Pointing game (cheXlocalize convention): 1 if the map's maximum lies in G, else 0, ``(B,)``; NaN for an empty G.

    On ties the first maximum in row-major order wins (``torch.argmax``), so a constant map points at the first
    pixel. Maps of another size are first resampled to G (see ``align_map_to_mask``). With ``selected`` (boolean,
    G's shape) the maximum is taken over the selected pixels only, and an empty ``selected`` points nowhere: 0.
    """
    maps = align_map_to_mask(maps, gt)
    values = maps.flatten(1)
    if selected is not None:
        selected = _check_selected(selected, gt).flatten(1)
        values = values.masked_fill(~selected, -torch.inf)
    hit = gt.flatten(1).bool().gather(1, values.argmax(dim=1, keepdim=True))[:, 0]
    if selected is not None:
        hit &= selected.any(dim=1)
    return _undefined_where_empty(hit.to(maps.dtype), gt)


def compute_relevance_mass(maps: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Relevance mass (``relevance_mass``): share of the map's positive relevance inside G, Σ E⁺·G / Σ E⁺, ``(B,)``.

    NaN where G is empty, and where the map has no positive value (no relevance to share).
    """
    return relevance_mass(maps, gt)


class PerSampleScoreMetric(CumulativeIterationMetric):
    """Accumulate a per-sample score ``score_fn(y_pred, y) -> (B,)`` over iterations; reduce skipping NaN samples.

    ``aggregate`` uses MONAI's ``do_metric_reduction``: with the default ``"mean"`` it returns the mean of the
    defined samples (0 when none is defined) and, with ``get_not_nans=True``, also how many samples were defined
    (the buffer length minus that is the number of undefined ones). ``get_buffer()`` keeps every per-sample score,
    as float64 (``(N, 1)``; ``(N, *sample_shape)`` for a ``score_fn`` of ``(B, *sample_shape)`` values).
    """

    def __init__(
        self,
        score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        sample_shape: tuple[int, ...] = (1,),
    ) -> None:
        super().__init__()
        self.score_fn = score_fn
        self.reduction = reduction
        self.get_not_nans = get_not_nans
        self.sample_shape = tuple(sample_shape)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **options) -> torch.Tensor:  # type: ignore[override]
        """Score one batch of maps ``y_pred`` against ground truths ``y``, as a ``(B, *sample_shape)`` buffer entry
        (float64, one dtype on every rank whatever the maps' precision); ``options`` (e.g. ``selected``) go to
        ``score_fn``."""
        return self._entry(self.score_fn(y_pred, y, **options))

    def _entry(self, scores: torch.Tensor) -> torch.Tensor:
        """The buffer entry of one batch's ``(B,)`` scores."""
        return scores.double().reshape(len(scores), *self.sample_shape)

    def add(self, scores: torch.Tensor) -> torch.Tensor:
        """Buffer one batch's scores ``score_fn`` would give, computed elsewhere (in one pass with other metrics), and
        return the buffer entry, as calling the metric does."""
        entry = self._entry(scores)
        self.extend(entry)
        return entry

    def _sync(self) -> None:
        """Gather every rank's scores with MONAI's ``evenly_divisible_all_gather``, on a rank that scored no sample
        too: MONAI's ``Cumulative`` skips the gather there, and the other ranks would wait for it forever."""
        if self._synced:
            return
        local = torch.stack(self._buffers[0]) if self._buffers else torch.empty(0, *self.sample_shape, dtype=torch.float64)
        self._synced_tensors = [evenly_divisible_all_gather(local, concat=True)]
        self._synced = True

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Reduce the buffered scores, NaN samples excluded; ``(score, not_nans)`` when ``get_not_nans`` is set."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        score, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (score, not_nans) if self.get_not_nans else score


class IoUAtQMetric(PerSampleScoreMetric):
    """Cumulative IoU@q of explanation maps against ground-truth masks (``compute_iou_at_q``)."""

    def __init__(
        self, q: float = 0.05, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False
    ) -> None:
        super().__init__(partial(compute_iou_at_q, q=q), reduction, get_not_nans)


class AUITCMetric(PerSampleScoreMetric):
    """Cumulative AUITC of explanation maps against ground-truth masks (``compute_auitc``)."""

    def __init__(
        self,
        n_thresholds: int = 101,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__(partial(compute_auitc, n_thresholds=n_thresholds), reduction, get_not_nans)


class HitRateMetric(PerSampleScoreMetric):
    """Cumulative pointing-game hit rate of explanation maps against ground-truth masks (``compute_hit``)."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__(compute_hit, reduction, get_not_nans)


class RelevanceMassMetric(PerSampleScoreMetric):
    """Cumulative relevance mass of explanation maps inside ground-truth masks (``compute_relevance_mass``)."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False) -> None:
        super().__init__(compute_relevance_mass, reduction, get_not_nans)


class IoUThresholdCurveMetric(PerSampleScoreMetric):
    """Cumulative IoU-threshold curves, the curves AUITC integrates: per sample the IoU of 1[E_n >= t] with G for
    each t of ``thresholds`` = ``linspace(0, 1, n_thresholds)``, E_n the min-max normalised map; NaN rows for an
    empty G. ``aggregate`` returns the mean curve over the samples with a G (zeros without any) and their number.
    """

    def __init__(self, n_thresholds: int = 101) -> None:
        if n_thresholds < 2:
            raise ValueError(f"n_thresholds must be at least 2, got {n_thresholds}.")
        self.thresholds = torch.linspace(0, 1, n_thresholds)
        super().__init__(self.curves, sample_shape=(n_thresholds,))

    def curves(self, maps: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """The ``(B, n_thresholds)`` curves of one batch: the maps on G's grid, min-max normalised, on
        ``threshold_grid``, as ``compute_auitc`` integrates them (``threshold_curve_and_area``)."""
        maps = minmax_normalize(align_map_to_mask(maps, gt))
        return threshold_curve_iou(maps, gt, threshold_grid(len(self.thresholds), maps))

    def aggregate(self) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        """``(mean curve (n_thresholds,) float64, number of samples with a G)``."""
        curves = self.get_buffer()
        defined = ~curves.isnan().any(dim=1)
        count = int(defined.sum())
        return curves[defined].sum(dim=0) / max(count, 1), count
