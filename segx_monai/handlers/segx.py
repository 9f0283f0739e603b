"""SegX and SegU inside an Ignite evaluator: explain, restrict to the clinical region, score, localise.

Attached in this order to a MONAI ``SupervisedEvaluator`` after :class:`~segx_monai.handlers.region.RegionSegmentation`:
:class:`ExplainPredictions` -> :class:`SegXMaps` -> :class:`SegUScores` -> :class:`LocalizationScores` (of
``segx_monai.handlers.localization``, importable from here too). Each works on the whole batch at once and stores its
results in the decollated output items and their rows (keys and columns: ``segx_monai.handlers.contract``); one
attached before the handler that makes what it reads fails naming that handler.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.engine import Engine

from segx_monai.core import (
    align_map_to_mask, compute_cauitc, compute_ciou, compute_cprecision, compute_crank_accuracy, compute_crelevance_mass,
    segx, top_fraction_mask,
)
from segx_monai.explainers import Explainer, explain_positive_classes
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns, OutputKeys
from segx_monai.handlers.localization import LocalizationScores
from segx_monai.handlers.shared import shared_levels, shared_top
from segx_monai.handlers.writers import IterationHandler, item_rows
from segx_monai.metrics.calibration import combined_score

__all__ = ["ExplainPredictions", "LocalizationScores", "SegUScores", "SegXMaps"]  # the bundles' configs name all four here


def _stack_pairs(items: Sequence[dict], key: str) -> torch.Tensor:
    """All items' ``(P_i, 1, *spatial)`` tensors of ``key`` as one ``(sum P_i, 1, *spatial)`` batch."""
    return torch.cat([item[key] for item in items])


def _split_pairs(values: torch.Tensor, items: Sequence[dict], key: str, count_key: str = OutputKeys.MAP) -> None:
    """Store the per-pair ``values`` back into the items, ``P_i`` of them each (inverse of :func:`_stack_pairs`)."""
    for item, part in zip(items, values.split([item[count_key].shape[0] for item in items])):
        item[key] = part


def _repeat_per_pair(items: Sequence[dict], key: str, count_key: str = OutputKeys.MAP) -> torch.Tensor:
    """Each item's ``(C, *spatial)`` tensor of ``key`` repeated once per explained pair of that item."""
    return torch.cat([item[key][None].expand(item[count_key].shape[0], *item[key].shape) for item in items])


def certainty_scores(
    maps: torch.Tensor, regions: torch.Tensor, q: float, n_thresholds: int,
    top: torch.Tensor | None = None, levels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every SegU score of ``CERTAINTY_SCORES``, ``(B,)`` each, of the raw ``maps`` with the predicted ``regions``.

    The maps' top fraction ``q`` (``top_fraction_mask``) is found once for the two scores that use it; ``top`` and
    ``levels`` (``normalized_levels``), on the regions' grid, are that work when another handler has done it."""
    maps = align_map_to_mask(maps, regions)
    top = top_fraction_mask(maps, q) if top is None else top
    return {
        Columns.CIOU: compute_ciou(maps, regions, q, top),
        Columns.CAUITC: compute_cauitc(maps, regions, n_thresholds, levels),
        Columns.CPRECISION: compute_cprecision(maps, regions, q, top),
        Columns.CRELEVANCE_MASS: compute_crelevance_mass(maps, regions),
        Columns.CRANK_ACCURACY: compute_crank_accuracy(maps, regions),
    }


class ExplainPredictions(IterationHandler):
    """Explains each sample's predicted class, or every predicted-positive class when ``multi_label``, in one batch.

    Adds ``map`` ``(P, 1, *spatial)`` and ``explained_classes`` to each output item and one row per pair (with the
    finding's name for multi-label), and each tensor of the explainer's ``extras()`` per pair under its name (a
    counterfactual explainer's images: ``counterfactual``). The explainer runs its own forward and backward pass on
    the classifier's input tensor, never on a modified copy of the image.
    """

    def __init__(
        self, explainer: Explainer, class_names: Sequence[str], multi_label: bool = False,
        thresholds: float | Sequence[float] | torch.Tensor = 0.5, pred_key: str = OutputKeys.PRED,
        image_key: str = OutputKeys.IMAGE,
    ) -> None:
        self.explainer, self.class_names, self.multi_label = explainer, list(class_names), multi_label
        self.thresholds, self.pred_key, self.image_key = thresholds, pred_key, image_key
        self.requires = (image_key, pred_key)

    def __call__(self, engine: Engine) -> None:
        items = self.output(engine)
        images = torch.stack([item[self.image_key] for item in items])
        probs = torch.stack([item[self.pred_key] for item in items]).to(images.device)
        if self.multi_label:
            positive = probs >= torch.as_tensor(self.thresholds, dtype=probs.dtype, device=probs.device)
        else:
            positive = torch.nn.functional.one_hot(probs.argmax(1), probs.shape[1]).bool()
        maps, sample_idx, class_idx = explain_positive_classes(self.explainer, images, positive)
        for i, item in enumerate(items):
            classes = class_idx[sample_idx == i].tolist()
            item[OutputKeys.MAP], item[OutputKeys.EXPLAINED_CLASSES] = maps[sample_idx == i].detach(), classes
            if self.multi_label:
                item[OutputKeys.ROWS] = [{Columns.FINDING: self.class_names[c]} for c in classes]
        for key, values in self.explainer.extras().items():
            _split_pairs(values.detach(), items, key)


class SegXMaps(IterationHandler):
    """Restricts each map to the predicted clinical region (:func:`segx_monai.core.segx`), batched over all pairs.

    Adds ``segx_map``, ``segx_binary`` and the binary ``region_mask`` used, and the ``empty_region`` flag to the rows
    (the raw map is kept for a sample whose segmenter found no region).
    """

    def __init__(
        self, variant: str = "rethreshold", q: float = 0.05, mask_threshold: float = 0.5, dilation: int = 0,
        soft_mask: bool = False, region_key: str = OutputKeys.REGION_PROB,
    ) -> None:
        self.kwargs = dict(variant=variant, q=q, mask_threshold=mask_threshold, dilation=dilation, soft_mask=soft_mask)
        self.region_key = region_key
        self.requires = (OutputKeys.MAP, region_key)

    def __call__(self, engine: Engine) -> None:
        items = self.output(engine)
        probs = _repeat_per_pair(items, self.region_key)
        top = shared_top(engine, items, OutputKeys.MAP, probs, self.kwargs["q"])
        result = segx(_stack_pairs(items, OutputKeys.MAP), probs, **self.kwargs, top=top)
        made = ((OutputKeys.SEGX_MAP, result.heatmap), (OutputKeys.SEGX_BINARY, result.binary), (OutputKeys.REGION_MASK, result.mask))
        for key, values in made:
            _split_pairs(values, items, key)
        for item, flags in zip(items, result.empty_mask.split([item[OutputKeys.MAP].shape[0] for item in items])):
            for row, flag in zip(item_rows(item), flags.tolist()):
                row[Columns.EMPTY_REGION] = int(flag)


class SegUScores(IterationHandler):
    """SegU certainty of each explained prediction: every score of ``CERTAINTY_SCORES`` (the paper's cIoU and cAUITC,
    and the size-aware precision, relevance mass and rank accuracy) of the raw map with the predicted region, and the
    region's share of the image (``region_fraction``: cIoU is capped at q / region_fraction).

    A row is flagged for ``review`` when its ``score`` (one of ``CERTAINTY_SCORES``) is below ``review_threshold`` or
    undefined (None: no flag, as when the threshold is being calibrated). With ``combined`` (the fit of
    ``segx_monai.metrics.calibration.fit_combined_score`` on [confidence, ``score``]) each row gets the ``combined``
    score too.
    """

    requires = (OutputKeys.MAP, OutputKeys.REGION_MASK)

    def __init__(
        self, q: float = 0.05, n_thresholds: int = 101, review_threshold: float | None = 0.1, score: str = Columns.CIOU,
        combined: dict | None = None,
    ) -> None:
        if score not in CERTAINTY_SCORES:
            valid = ", ".join(CERTAINTY_SCORES)
            raise ValueError(f"SegUScores: score (certainty_score) must be one of {valid}, got {score!r}.")
        if review_threshold is not None and (isinstance(review_threshold, bool) or not isinstance(review_threshold, (int, float))):
            raise ValueError(f"SegUScores: review_threshold must be a number, got {review_threshold!r}.")
        if combined is not None and combined.get("features") != [Columns.CONFIDENCE, score]:
            raise ValueError(f"SegUScores: the combined fit is on {combined.get('features')}, expected "
                             f"{[Columns.CONFIDENCE, score]} for certainty_score {score!r}.")
        self.q, self.n_thresholds, self.review_threshold, self.score = q, n_thresholds, review_threshold, score
        self.combined = combined

    def __call__(self, engine: Engine) -> None:
        items = self.output(engine)
        maps, regions = _stack_pairs(items, OutputKeys.MAP), _stack_pairs(items, OutputKeys.REGION_MASK)
        top = shared_top(engine, items, OutputKeys.MAP, regions, self.q)
        levels = shared_levels(engine, items, OutputKeys.MAP, regions, self.n_thresholds)
        scores = {
            **certainty_scores(maps, regions, self.q, self.n_thresholds, top, levels),
            Columns.REGION_FRACTION: regions.flatten(1).float().mean(dim=1),
        }
        rows = [row for item in items for row in item_rows(item) if item[OutputKeys.MAP].shape[0]]
        for n, row in enumerate(rows):
            row.update({name: float(values[n]) for name, values in scores.items()})
            if self.review_threshold is not None:
                row[Columns.REVIEW] = int(not row[self.score] >= self.review_threshold)
            if self.combined is not None:
                features = torch.tensor([[row.get(Columns.CONFIDENCE, float("nan")), row[self.score]]])
                row[Columns.COMBINED] = float(combined_score(self.combined, features)[0])
