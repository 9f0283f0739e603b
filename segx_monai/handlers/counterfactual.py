"""COIN's own measures of a counterfactual run inside an evaluator (``segx_monai.metrics.counterfactual``).

:class:`CounterfactualScores`, attached after :class:`~segx_monai.handlers.segx.SegXMaps`, adds per explained pair the
target outcome's probability on the image and on its counterfactual and, where a ground truth is known, the IoU of the
weak segmentation with it; :class:`CounterfactualRealism`, among the writers, sums them up at the end of the run with
the counterfactuals' realism in ``counterfactual.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.utils import evenly_divisible_all_gather
from torch import Tensor, nn

from segx_monai.core.segx import align_map_to_mask
from segx_monai.explainers.base import explaining
from segx_monai.handlers.contract import WEAK_IOU, Columns, HandlerOrderError, OutputKeys
from segx_monai.handlers.pointing import PairGroundTruth
from segx_monai.handlers.segx import _repeat_per_pair
from segx_monai.handlers.writers import IterationHandler, item_rows
from segx_monai.metrics.counterfactual import (
    counterfactual_validity, frechet_distance, is_target, target_probability, weak_segmentation_ious,
)
from segx_monai.utils.staging import write_text_atomic

CLASSIFIER_FEATURES = "the classifier's penultimate features (the input of its last linear layer)"
PROBABILITIES = (Columns.TARGET_PROBABILITY, Columns.COUNTERFACTUAL_PROBABILITY)


def feature_space(network_file: str | Path | None) -> str:
    """What realism is measured on: the TorchScript network of ``realism_network_file``, or the classifier's own
    penultimate features when none is given (nothing is downloaded)."""
    return CLASSIFIER_FEATURES if network_file is None else f"the TorchScript network {network_file} (realism_network_file)"


def load_feature_network(network_file: str | Path) -> torch.jit.ScriptModule:
    """The user's feature network, a local TorchScript file, on the CPU; an error names the file and the key."""
    path = Path(network_file)
    if not path.is_file():
        raise FileNotFoundError(f"realism_network_file {path}: no such file; expected a TorchScript network (torch.jit.save) "
                                "mapping the classifier's input images (B, C, *spatial) to features (B, ...), or null")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ValueError(f"realism_network_file {path}: not a TorchScript file ({type(e).__name__}: {e}); expected one "
                         "written by torch.jit.save") from e


def penultimate_features(network: nn.Module, images: Tensor) -> Tensor:
    """``(B, D)``: the input of the network's last ``nn.Linear`` (by a hook removed after) for ``images``, the
    network frozen as found and without gradients."""
    linear = [module for module in network.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError(f"{type(network).__name__} has no nn.Linear layer whose input would be its penultimate features; "
                         "give realism_network_file (a TorchScript feature network)")
    captured = []
    hook = linear[-1].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        with explaining(network), torch.no_grad():
            network(images)
    finally:
        hook.remove()
    return captured[-1].reshape(len(images), -1).float()


class CounterfactualScores(IterationHandler):
    """Per explained pair of a counterfactual run: the probability of the target outcome (``target_probability``:
    the target class, or for a target of no finding 1 - p of the explained finding) on the image, from the evaluator's
    prediction, and on its counterfactual, by one forward of the frozen classifier per batch without gradients (columns
    ``Columns.TARGET_PROBABILITY``, ``Columns.COUNTERFACTUAL_PROBABILITY``).

    With ``ground_truth`` (the interpretation's :class:`PairGroundTruth`: the explained finding's mask, the lesion), the
    IoU of the weak segmentation ``map > threshold`` (opened by ``opening``) with it, as it is and restricted to the
    region SegX used (``contract.WEAK_IOU``); NaN for an empty mask, nothing for a pair without one.
    """

    def __init__(
        self, network: nn.Module, target: Sequence[float] | Tensor, multi_label: bool, threshold: float = 0.25,
        opening: int = 0, ground_truth: PairGroundTruth | None = None, pred_key: str = OutputKeys.PRED,
    ) -> None:
        self.network, self.target, self.multi_label = network, torch.as_tensor(target, dtype=torch.float32), multi_label
        self.threshold, self.opening, self.ground_truth, self.pred_key = threshold, opening, ground_truth, pred_key
        self.requires = (pred_key, OutputKeys.MAP, OutputKeys.EXPLAINED_CLASSES, OutputKeys.REGION_MASK, OutputKeys.COUNTERFACTUAL)

    def __call__(self, engine: Engine) -> None:
        pairs = [(batch_item, item) for batch_item, item in self.items(engine) if item[OutputKeys.MAP].shape[0]]
        if not pairs:
            return
        items = [item for _, item in pairs]
        counterfactuals = torch.cat([item[OutputKeys.COUNTERFACTUAL] for item in items])
        classes = torch.tensor([c for item in items for c in item[OutputKeys.EXPLAINED_CLASSES]], device=counterfactuals.device)
        target = self.target.to(counterfactuals.device)
        with explaining(self.network), torch.no_grad():
            logits = self.network(counterfactuals).float()
        probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=1)
        before = target_probability(_repeat_per_pair(items, self.pred_key).float().to(probs.device), target, classes)
        columns = dict(zip(PROBABILITIES, (before, target_probability(probs, target, classes))))
        for n, row in enumerate(row for item in items for row in item_rows(item)):
            row.update({name: float(values[n]) for name, values in columns.items()})
        if self.ground_truth is not None:
            self.score_weak_segmentation(pairs)

    def score_weak_segmentation(self, pairs: list[tuple[dict, dict]]) -> None:
        """The weak-segmentation IoU columns of the pairs that have a ground truth."""
        scored = [(item, found[0]) for batch_item, item in pairs if (found := self.ground_truth(batch_item, item)) is not None]
        if not scored:
            return
        gt = torch.cat([masks for _, masks in scored])
        maps = align_map_to_mask(torch.cat([item[OutputKeys.MAP] for item, _ in scored]), gt)
        regions = align_map_to_mask(torch.cat([item[OutputKeys.REGION_MASK] for item, _ in scored]).float(), gt) >= 0.5
        ious = dict(zip(WEAK_IOU, weak_segmentation_ious(maps, regions, gt, self.threshold, self.opening)))
        for n, row in enumerate(row for item, _ in scored for row in item_rows(item)):
            row.update({WEAK_IOU[variant]: float(values[n]) for variant, values in ious.items()})


def _defined(value: float) -> float | None:
    """A number for JSON: None where undefined (NaN)."""
    return None if math.isnan(value) else float(value)


def _gathered(parts: list[Tensor], width: int) -> Tensor:
    """This rank's ``(N_i, width)`` rows, or in a distributed run every rank's (the widest ``width`` among them, for a
    rank that has none)."""
    if idist.get_world_size() > 1:
        width = int(idist.all_reduce(width, op="MAX"))
    local = torch.cat(parts).double() if parts else torch.empty(0, width, dtype=torch.float64)
    if idist.get_world_size() == 1:
        return local
    return evenly_divisible_all_gather(local.to(idist.device()), concat=True).cpu()


class CounterfactualRealism(IterationHandler):
    """At the end of a counterfactual interpretation run, writes ``path`` (JSON, atomically) with, over the explained
    pairs (the rows :class:`CounterfactualScores` fills): counterfactual validity (``counterfactual_validity`` with
    ``confidence`` and ``tau``), the mean weak-segmentation IoU raw and SegX; and realism: the Fréchet distance
    between the features of the real images whose label (``label_key``) is the target and of the counterfactuals of
    the images whose label is not (one per image: a counterfactual does not depend on the explained class), in the
    space of ``feature_network_file`` (a TorchScript network given the classifier's input) or else the frozen
    classifier's penultimate features (``feature_space`` says which). Undefined values are null with the reason. In
    a distributed run every rank's pairs and features are gathered and rank 0 writes.
    """

    requires = (OutputKeys.IMAGE, OutputKeys.MAP, OutputKeys.COUNTERFACTUAL)

    def __init__(
        self, path: str | Path, network: nn.Module, target: Sequence[float] | Tensor, confidence: float = 0.8,
        tau: float = 0.8, feature_network_file: str | Path | None = None, label_key: str = "label",
    ) -> None:
        self.path, self.network, self.target = Path(path), network, torch.as_tensor(target, dtype=torch.float32)
        self.confidence, self.tau, self.label_key = confidence, tau, label_key
        self.features_name = feature_space(feature_network_file)
        self.feature_network = None if feature_network_file is None else load_feature_network(feature_network_file)
        self.feature_network_file = None if feature_network_file is None else str(feature_network_file)
        self.reset()

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.scores, self.real, self.generated, self.width = [], [], [], 0

    def features(self, images: Tensor) -> Tensor:
        """``(B, D)`` features of ``images`` in the realism feature space, without gradients."""
        if self.feature_network is None:
            return penultimate_features(self.network, images)
        network = self.feature_network.to(images.device)
        with explaining(network), torch.no_grad():
            return network(images).reshape(len(images), -1).float()

    def _pair_scores(self, item: dict) -> list[list[float]]:
        """``[before, after, IoU raw, IoU SegX]`` of each of the item's pairs (NaN for an IoU not measured)."""
        rows = item_rows(item)[: item[OutputKeys.MAP].shape[0]]
        for row in rows:
            if Columns.TARGET_PROBABILITY not in row:
                name = type(self).__name__
                raise HandlerOrderError(f"{name}: the rows have no {Columns.TARGET_PROBABILITY!r}; it is made by "
                                        f"segx_monai.handlers.counterfactual.CounterfactualScores, which must come before {name}")
        return [[row[Columns.TARGET_PROBABILITY], row[Columns.COUNTERFACTUAL_PROBABILITY],
                 *(row.get(column, math.nan) for column in WEAK_IOU.values())] for row in rows]

    def __call__(self, engine: Engine) -> None:
        batch = list(self.items(engine))
        for batch_item, item in batch:
            if self.label_key not in batch_item:
                raise KeyError(f"{type(self).__name__}: the batch has no {self.label_key!r}; realism compares the "
                               "counterfactuals with the real images of the target class, known from the labels "
                               "(the interpreting workflow's folds)")
            self.scores += self._pair_scores(item)
        labels = torch.stack([torch.as_tensor(batch_item[self.label_key]).cpu() for batch_item, _ in batch])
        normal = is_target(labels, self.target).tolist()
        real = [item[OutputKeys.IMAGE] for (_, item), n in zip(batch, normal) if n]
        generated = [item[OutputKeys.COUNTERFACTUAL][0] for (_, item), n in zip(batch, normal) if not n and item[OutputKeys.MAP].shape[0]]
        if real or generated:
            features = self.features(torch.stack(real + generated)).cpu()
            self.real.append(features[: len(real)])
            self.generated.append(features[len(real):])
            self.width = features.shape[1]

    def result(self) -> dict:
        """What ``counterfactual.json`` holds, over every rank's pairs and images."""
        scores = _gathered([torch.tensor(self.scores, dtype=torch.float64).reshape(-1, 4)], 4)
        real, generated = _gathered(self.real, self.width), _gathered(self.generated, self.width)
        share, n_confident = counterfactual_validity(scores[:, 0], scores[:, 1], self.confidence, self.tau)
        validity = {"value": _defined(share), "n_confident": n_confident, "n_pairs": len(scores),
                    "confidence": self.confidence, "tau": self.tau}
        if not n_confident:
            validity["note"] = (f"no confidently abnormal pair (target probability at most 1 - confidence = "
                                f"{1 - self.confidence:g}): validity undefined")
        iou = {}
        for v, variant in enumerate(WEAK_IOU, start=2):
            values = scores[:, v][scores[:, v].isfinite()]
            iou[variant] = {"mean": _defined(float(values.mean())) if len(values) else None, "n": len(values)}
        if not iou["raw"]["n"]:
            iou["note"] = "no explained pair has a non-empty ground-truth mask: IoU undefined"
        distance = frechet_distance(real, generated)
        realism = {"frechet_distance": _defined(distance), "features": self.features_name,
                   "feature_network_file": self.feature_network_file, "n_real": len(real), "n_counterfactual": len(generated)}
        if math.isnan(distance):
            realism["note"] = (f"the Fréchet distance needs at least 2 real images of the target and 2 counterfactuals, "
                               f"got {len(real)} and {len(generated)}")
        return {"validity": validity, "weak_segmentation_iou": iou, "realism": realism}

    def write(self, engine: Engine | None = None) -> None:
        """Write ``path`` (rank 0, once every rank's values are gathered)."""
        result = self.result()
        if idist.get_rank() == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(result, indent=1))
