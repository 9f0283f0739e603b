"""cheXlocalize-style localisation inside the evaluators (``segx_monai.metrics.pointing``): the map threshold of each
finding tuned on the validation fold (:class:`LocalizationThresholdTuner`, in the ``calibrating`` workflow, saved in the
review file by ``segx_monai.handlers.review.ReviewCalibrationSaver``) and applied unchanged to the test fold
(:class:`TunedLocalizationScores`, in ``interpreting``). :class:`PairGroundTruth`, one config entry shared by both,
says which mask and which finding (group) each explained pair is scored against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from ignite.engine import Engine, Events

from segx_monai.core.maps import minmax_normalize, per_sample
from segx_monai.core.segx import align_map_to_mask
from segx_monai.handlers.contract import MAP_VARIANTS, TUNED_METRICS, TUNED_PREFIX, Columns, OutputKeys, localization_column
from segx_monai.handlers.localization import pair_masks
from segx_monai.handlers.writers import IterationHandler, item_rows
from segx_monai.metrics.pointing import localize, tune_localization_threshold

TRUE_POSITIVE = ("explained pairs whose prediction is correct and whose ground truth is non-empty: a false positive or "
                 "negative scores 0 at every threshold, so the threshold that is best over them is best over all")


class PairGroundTruth:
    """The ground-truth mask and group of each explained pair: the batch's ``gt_key`` ``(1, *spatial)`` for every pair,
    all in one group ``name``; or, with ``class_names``, ``(K, *spatial)`` masks whose explained class's channel scores
    the pair, grouped by that class's name (a chest radiograph's finding masks)."""

    def __init__(self, gt_key: str = "mask", class_names: Sequence[str] | None = None, name: str = "region") -> None:
        self.gt_key, self.class_names = gt_key, list(class_names) if class_names is not None else None
        self.groups = tuple(self.class_names) if self.class_names is not None else (name,)
        self.requires = (OutputKeys.MAP, OutputKeys.SEGX_MAP) + ((OutputKeys.EXPLAINED_CLASSES,) if self.class_names else ())

    def __call__(self, batch_item: dict, item: dict) -> tuple[torch.Tensor, list[str]] | None:
        """The pairs' boolean masks ``(P, 1, *spatial)`` and group names, or None when the item has no pair or no
        ground truth."""
        if not item[OutputKeys.MAP].shape[0] or self.gt_key not in batch_item:
            return None
        masks = pair_masks(batch_item, item, self.gt_key, self.class_names is not None) > 0
        if self.class_names is None:
            return masks, [self.groups[0]] * len(masks)
        return masks, [self.class_names[k] for k in item[OutputKeys.EXPLAINED_CLASSES]]


def _normalized_maps(item: dict, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """The raw and SegX maps of an item's pairs on their masks' grid, by variant, min-max normalised per map and brought
    to the raw map's maximum: 1 for every explainer but ``patch_logits`` scaled, whose maximum is the prediction's
    probability, kept so that the map of an unlikely finding stays below the threshold (else scaled == raw here)."""
    raw = align_map_to_mask(item[OutputKeys.MAP].detach(), masks)
    top = per_sample(raw.flatten(1).amax(dim=1), raw)
    return {variant: minmax_normalize(align_map_to_mask(item[key].detach(), masks)) * top for variant, key in MAP_VARIANTS.items()}


def _scored_items(handler: IterationHandler, engine: Engine) -> Iterator[tuple[dict, torch.Tensor, list[str], dict]]:
    """The output items of ``engine``'s batch that have explained pairs and a ground truth (``handler.ground_truth``):
    each with its pairs' masks, groups and ``_normalized_maps``."""
    for batch_item, item in handler.items(engine):
        found = handler.ground_truth(batch_item, item)
        if found is not None:
            yield item, *found, _normalized_maps(item, found[0])


class LocalizationThresholdTuner(IterationHandler):
    """On the validation fold: keeps the raw and SegX map and the mask of each true-positive pair (``TRUE_POSITIVE``:
    the row's ``correct`` is 1 and its mask non-empty), and :meth:`result` tunes one threshold per group and map
    (``tune_localization_threshold`` to ``tolerance``). Maps are kept as ``_normalized_maps`` makes them, as float16 on the CPU, whose
    steps (at most 2**-11 on [0.5, 1]) are finer than the tolerance, where uint8 (1/255) would be coarser; with the
    boolean mask that is 5 bytes a pixel (80 KB a pair at 128 x 128, 1.3 MB at 512 x 512). Rank-local: run it in one
    process, as the ``calibrating`` workflow does."""

    def __init__(self, ground_truth: PairGroundTruth, tolerance: float = 1e-3) -> None:
        self.ground_truth, self.tolerance = ground_truth, tolerance
        self.requires = ground_truth.requires
        self.pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.reset)

    def reset(self, engine: Engine | None = None) -> None:
        self.pairs = {group: [] for group in self.ground_truth.groups}

    def __call__(self, engine: Engine) -> None:
        for item, masks, groups, maps in _scored_items(self, engine):
            for p, (row, group) in enumerate(zip(item_rows(item), groups)):
                if row.get(Columns.CORRECT) == 1 and masks[p].any():
                    self.pairs.setdefault(group, []).append(
                        (maps["raw"][p].half().cpu(), maps["segx"][p].half().cpu(), masks[p].cpu()))

    def result(self) -> dict:
        """The ``localization`` entry of the review file: per group the number of true-positive pairs and, per map,
        the tuned threshold and its validation mean IoU (null, with a reason, for a group without such a pair)."""
        groups = {}
        for group, pairs in self.pairs.items():
            entry = {"n_pairs": len(pairs), "threshold": dict.fromkeys(MAP_VARIANTS), "validation_miou": dict.fromkeys(MAP_VARIANTS)}
            if not pairs:
                entry["reason"] = f"no true-positive pair of {group!r} on the validation fold: nothing to tune on"
            for v, variant in enumerate(MAP_VARIANTS):
                if pairs:
                    maps, masks = torch.stack([pair[v] for pair in pairs]), torch.stack([pair[2] for pair in pairs])
                    threshold, miou = tune_localization_threshold(maps, masks, self.tolerance, normalize=False)
                    entry["threshold"][variant], entry["validation_miou"][variant] = threshold, miou
            groups[group] = entry
        return {"fold": "validation", "ground_truth": self.ground_truth.gt_key, "pairs": TRUE_POSITIVE,
                "tolerance": self.tolerance, "groups": groups}


class TunedLocalizationScores(IterationHandler):
    """On the test fold: the columns ``tuned_<hit|iou>_<raw|segx>`` (``contract.TUNED_METRICS``) of each explained
    pair with a ground truth, ``localize`` of its raw and SegX map (``_normalized_maps``) at its group's tuned
    threshold: the pointing game (NaN for an empty mask) and the IoU (0 for an empty mask: a false positive).
    ``thresholds`` maps each group to ``{"raw": t, "segx": t}`` (``ReviewCalibration.localization_thresholds``); where a group or map has none (None:
    the run has no tuned thresholds) the IoU is left undefined (NaN) rather than measured at an invented threshold."""

    def __init__(self, ground_truth: PairGroundTruth, thresholds: Mapping[str, Mapping[str, float | None]] | None) -> None:
        self.ground_truth, self.thresholds = ground_truth, thresholds or {}
        self.requires = ground_truth.requires

    def __call__(self, engine: Engine) -> None:
        for item, masks, groups, maps in _scored_items(self, engine):
            for variant in MAP_VARIANTS:
                tuned = [(self.thresholds.get(group) or {}).get(variant) for group in groups]
                threshold = torch.tensor([math.nan if t is None else t for t in tuned], device=masks.device)
                scores = localize(maps[variant], masks, threshold.nan_to_num(nan=0.0), normalize=False)
                scores["iou"] = scores["iou"].where(threshold.isfinite(), math.nan)
                for p, row in enumerate(item_rows(item)):
                    row.update({localization_column(m, variant, TUNED_PREFIX): float(scores[m][p]) for m in TUNED_METRICS})
