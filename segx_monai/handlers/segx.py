"""SegX and SegU inside an Ignite evaluator: explain, restrict to the clinical region, score, localise.

Attached in this order to a MONAI ``SupervisedEvaluator`` after :class:`~segx_monai.handlers.region.RegionSegmentation`:
:class:`ExplainPredictions` -> :class:`SegXMaps` -> :class:`SegUScores` -> :class:`LocalizationScores`. Each works
on the whole batch at once and stores its results in the decollated output items and their rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from segx_monai.core import compute_cauitc, compute_ciou, minmax_normalize, segx, threshold_curve_iou
from segx_monai.explainers import Explainer, explain_positive_classes
from segx_monai.handlers.writers import IterationHandler, item_rows, iterate_items
from segx_monai.metrics import compute_auitc, compute_hit, compute_iou_at_q, compute_relevance_mass


def _stack_pairs(items: Sequence[dict], key: str) -> torch.Tensor:
    """All items' ``(P_i, 1, *spatial)`` tensors of ``key`` as one ``(sum P_i, 1, *spatial)`` batch."""
    return torch.cat([item[key] for item in items])


def _split_pairs(values: torch.Tensor, items: Sequence[dict], key: str, count_key: str = "map") -> None:
    """Store the per-pair ``values`` back into the items, ``P_i`` of them each (inverse of :func:`_stack_pairs`)."""
    for item, part in zip(items, values.split([item[count_key].shape[0] for item in items])):
        item[key] = part


def _repeat_per_pair(items: Sequence[dict], key: str, count_key: str = "map") -> torch.Tensor:
    """Each item's ``(C, *spatial)`` tensor of ``key`` repeated once per explained pair of that item."""
    return torch.cat([item[key][None].expand(item[count_key].shape[0], *item[key].shape) for item in items])


class ExplainPredictions(IterationHandler):
    """Explains each sample's predicted class, or every predicted-positive class when ``multi_label``, in one batch.

    Adds ``map`` ``(P, 1, *spatial)`` and ``explained_classes`` to each output item and one row per pair (with the
    finding's name for multi-label). The explainer runs its own forward and backward pass on the classifier's
    input tensor, never on a modified copy of the image.
    """

    def __init__(
        self, explainer: Explainer, class_names: Sequence[str], multi_label: bool = False,
        thresholds: float | Sequence[float] | torch.Tensor = 0.5, pred_key: str = "pred", image_key: str = "image",
    ) -> None:
        self.explainer, self.class_names, self.multi_label = explainer, list(class_names), multi_label
        self.thresholds, self.pred_key, self.image_key = thresholds, pred_key, image_key

    def __call__(self, engine: Engine) -> None:
        items = engine.state.output
        images = torch.stack([item[self.image_key] for item in items])
        probs = torch.stack([item[self.pred_key] for item in items]).to(images.device)
        if self.multi_label:
            positive = probs >= torch.as_tensor(self.thresholds, dtype=probs.dtype, device=probs.device)
        else:
            positive = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).bool()
        maps, sample_idx, class_idx = explain_positive_classes(self.explainer, images, positive)
        for i, item in enumerate(items):
            classes = class_idx[sample_idx == i].tolist()
            item["map"], item["explained_classes"] = maps[sample_idx == i].detach(), classes
            if self.multi_label:
                item["rows"] = [{"finding": self.class_names[c]} for c in classes]


class SegXMaps(IterationHandler):
    """Restricts each map to the predicted clinical region (:func:`segx_monai.core.segx`), batched over all pairs.

    Adds ``segx_map``, ``segx_binary`` and the binary ``region_mask`` used, and the ``empty_region`` flag to the rows
    (the raw map is kept for a sample whose segmenter found no region).
    """

    def __init__(
        self, variant: str = "rethreshold", q: float = 0.05, mask_threshold: float = 0.5, dilation: int = 0,
        soft_mask: bool = False, region_key: str = "region_prob",
    ) -> None:
        self.kwargs = dict(variant=variant, q=q, mask_threshold=mask_threshold, dilation=dilation, soft_mask=soft_mask)
        self.region_key = region_key

    def __call__(self, engine: Engine) -> None:
        items = engine.state.output
        result = segx(_stack_pairs(items, "map"), _repeat_per_pair(items, self.region_key), **self.kwargs)
        for key, values in (("segx_map", result.heatmap), ("segx_binary", result.binary), ("region_mask", result.mask)):
            _split_pairs(values, items, key)
        for item, flags in zip(items, result.empty_mask.split([item["map"].shape[0] for item in items])):
            for row, flag in zip(item_rows(item), flags.tolist()):
                row["empty_region"] = int(flag)


class SegUScores(IterationHandler):
    """SegU certainty of each explained prediction: cIoU and cAUITC of the raw map with the predicted region.

    A row is flagged for ``review`` when its ``score`` (``"ciou"`` or ``"cauitc"``) is below ``review_threshold``.
    """

    def __init__(self, q: float = 0.05, n_thresholds: int = 101, review_threshold: float = 0.1, score: str = "ciou") -> None:
        if score not in ("ciou", "cauitc"):
            raise ValueError(f"score must be 'ciou' or 'cauitc', got {score!r}.")
        self.q, self.n_thresholds, self.review_threshold, self.score = q, n_thresholds, review_threshold, score

    def __call__(self, engine: Engine) -> None:
        items = engine.state.output
        maps, regions = _stack_pairs(items, "map"), _stack_pairs(items, "region_mask")
        scores = {"ciou": compute_ciou(maps, regions, self.q), "cauitc": compute_cauitc(maps, regions, self.n_thresholds)}
        rows = [row for item in items for row in item_rows(item) if item["map"].shape[0]]
        for n, row in enumerate(rows):
            row.update({name: float(values[n]) for name, values in scores.items()})
            row["review"] = int(row[self.score] < self.review_threshold)


class LocalizationScores(IterationHandler):
    """IoU@q, AUITC, hit and relevance mass of the raw and the SegX map against a ground-truth mask, per row.

    The ground truth ``gt_key`` is read from the batch: ``(1, *spatial)`` for one clinical region, or ``(K, *spatial)``
    with ``per_class`` (one mask per finding, the explained class's channel is used). Rows without ground truth get
    NaN. Running means (NaN excluded) go to ``engine.state.metrics`` and the mean IoU-vs-threshold curves of both
    maps to ``curves_path`` (JSON) at the end; nothing else is kept between iterations. ``prefix`` tells apart the
    columns of a second ground truth (e.g. the findings' own masks beside the lungs).
    """

    METRICS = {"iou_at_q": compute_iou_at_q, "auitc": compute_auitc, "hit": compute_hit, "relevance_mass": compute_relevance_mass}
    MAPS = {"raw": "map", "segx": "segx_map"}

    def __init__(
        self, gt_key: str = "mask", per_class: bool = False, q: float = 0.05, n_thresholds: int = 101,
        curves_path: str | Path | None = None, prefix: str = "",
    ) -> None:
        self.gt_key, self.per_class, self.q, self.curves_path, self.prefix = gt_key, per_class, q, curves_path, prefix
        self.thresholds = torch.linspace(0, 1, n_thresholds)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def reset(self, engine: Engine | None = None) -> None:
        self.sums = {f"{self.prefix}{m}_{v}": 0.0 for m in self.METRICS for v in self.MAPS}
        self.counts = dict.fromkeys(self.sums, 0)
        self.curve_sums = {v: torch.zeros(len(self.thresholds), dtype=torch.float64) for v in self.MAPS}
        self.curve_count = 0

    def _ground_truth(self, batch_item: dict, item: dict) -> torch.Tensor:
        gt = torch.as_tensor(batch_item[self.gt_key]).to(item["map"].device)
        if self.per_class:
            return gt[item["explained_classes"]].unsqueeze(1)
        return gt[None].expand(item["map"].shape[0], *gt.shape)

    def __call__(self, engine: Engine) -> None:
        pairs = [(b, item) for b, item in iterate_items(engine) if item["map"].shape[0] and self.gt_key in b]
        if not pairs:
            return
        gt = torch.cat([self._ground_truth(b, item) for b, item in pairs]) > 0
        rows = [row for _, item in pairs for row in item_rows(item)]
        for variant, key in self.MAPS.items():
            maps = torch.cat([item[key] for _, item in pairs])
            for metric, fn in self.METRICS.items():
                kwargs = {"q": self.q} if metric == "iou_at_q" else {"n_thresholds": len(self.thresholds)} if metric == "auitc" else {}
                values = fn(maps, gt, **kwargs).double().cpu()
                name = f"{self.prefix}{metric}_{variant}"
                for row, value in zip(rows, values.tolist()):
                    row[name] = value
                defined = ~values.isnan()
                self.sums[name] += float(values[defined].sum())
                self.counts[name] += int(defined.sum())
            curves = threshold_curve_iou(minmax_normalize(maps), gt, self.thresholds.to(maps.device)).double().cpu()
            defined = ~curves.isnan().any(1)
            self.curve_sums[variant] += curves[defined].sum(0)
        self.curve_count += int(defined.sum())

    def finish(self, engine: Engine) -> None:
        """Metric means over every explained pair (summed over the ranks of a distributed run); rank 0 writes the curves."""
        names = list(self.sums)
        totals = idist.all_reduce(torch.tensor([self.sums[n] for n in names] + [self.counts[n] for n in names] + [self.curve_count], dtype=torch.float64))
        curve_sums = {v: idist.all_reduce(s) for v, s in self.curve_sums.items()}
        for name, total, count in zip(names, totals[: len(names)].tolist(), totals[len(names): -1].tolist()):
            engine.state.metrics[name] = total / count if count else math.nan
        if self.curves_path is not None and idist.get_rank() == 0:
            curve_count = int(totals[-1])
            n = max(curve_count, 1)
            curves = {f"auitc_curve_{v}": (s / n).tolist() for v, s in curve_sums.items()}
            Path(self.curves_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.curves_path).write_text(json.dumps({"thresholds": self.thresholds.tolist(), **curves, "n": curve_count}))
