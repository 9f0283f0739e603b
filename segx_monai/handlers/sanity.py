"""Sanity checks of the explanations at the end of an evaluator's run (METHOD.md §9), written to ``sanity.json``.

Attached after :class:`~segx_monai.handlers.segx.SegXMaps`. It keeps the first explained pairs and, when the run
completes, compares their maps with those of the classifier re-initialised layer by layer (model-parameter
randomisation, Adebayo et al. 2018) and measures how fast the classifier's score falls (rises) as the pixels each map
ranks first are removed (revealed) (deletion / insertion, Petsiuk et al. 2018), for raw and SegX maps alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from scipy.stats import bootstrap
from torch import nn

from segx_monai.core import segx
from segx_monai.explainers import Explainer
from segx_monai.explainers.base import explaining
from segx_monai.handlers.contract import CERTAINTY_SCORES, Columns, OutputKeys
from segx_monai.handlers.segx import ExplainPredictions, SegUScores, SegXMaps, certainty_scores
from segx_monai.handlers.writers import IterationHandler
from segx_monai.metrics.sanity import (
    INSERTION_BLUR_SIGMA, check_layers, deletion_insertion, map_ssim, randomized_cascade, spearman_correlation,
)
from segx_monai.utils.staging import write_text_atomic

N_BOOTSTRAP = 1000  # resamples of the explained pairs behind each 95% interval
DELETION_BASELINE = 0.0  # deleted pixels take the value 0: the dataset mean, as the images are normalised
MAP_KINDS = ("raw", "segx")


def mean_interval(values: torch.Tensor, seed: int) -> dict:
    """Mean of the defined (finite) ``values`` with its 95% percentile-bootstrap interval (scipy) and their number;
    None where undefined (no value, or fewer than two for the interval)."""
    values = values.detach().double().cpu().numpy()
    values = values[np.isfinite(values)]
    estimate = {"mean": float(values.mean()) if len(values) else None, "ci": [None, None], "n": len(values)}
    if len(values) >= 2:
        ci = bootstrap((values,), np.mean, n_resamples=N_BOOTSTRAP, method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        estimate["ci"] = [float(ci.low), float(ci.high)]
    return estimate


def _the_handler(handlers: Sequence[object], kind: type) -> object:
    """The one handler of type ``kind`` among the evaluator's explanation handlers."""
    found = [handler for handler in handlers if isinstance(handler, kind)]
    if len(found) != 1:
        raise ValueError(f"SanityChecks: explanation_handlers must hold one {kind.__name__}, got {len(found)} among "
                         f"{[type(h).__name__ for h in handlers]}.")
    return found[0]


class SanityChecks(IterationHandler):
    """Keeps the first ``n_samples`` explained pairs (image, class, raw and SegX map, region probability and mask) and,
    when the run completes, writes ``path`` (JSON, atomically) with:

    - ``cascade``: for each step of ``randomized_cascade`` over ``layers`` (None: ``cascade_layers``, output layer
      first; re-initialised with ``seed``), the Spearman correlation and SSIM of the randomised classifier's raw and
      SegX maps with the trained classifier's (and of SegX maps inside the region), and the SegU scores of its raw
      maps (``trained_segu``: the trained classifier's, for reference), each a mean with its 95% bootstrap interval
      over pairs;
    - ``deletion`` / ``insertion``: the trained classifier's probability of the explained class as the pixels ranked
      first by the raw or SegX map are removed / revealed in ``n_steps`` steps: mean curves, AUCs, and the paired
      SegX − raw AUC difference.

    ``explanation_handlers`` are the evaluator's: their ``ExplainPredictions`` gives the trained network and whether
    the classifier is multi-label (sigmoid, else softmax, scores), ``SegXMaps`` and ``SegUScores`` the SegX and SegU
    settings. ``explainer_factory(network)`` builds the same explainer for a randomised copy. The trained network, its
    modes, parameters and hooks are left as they were. In a distributed run only the main rank computes and writes,
    from the pairs of its own shard.
    """

    def __init__(
        self, path: str | Path, explainer_factory: Callable[[nn.Module], Explainer], explanation_handlers: Sequence[object],
        n_samples: int = 16, n_steps: int = 16, seed: int = 0, layers: Sequence[str] | None = None,
    ) -> None:
        if n_samples < 1 or n_steps < 1:
            raise ValueError(f"SanityChecks: n_samples and n_steps must be positive, got {n_samples} and {n_steps}.")
        explain = _the_handler(explanation_handlers, ExplainPredictions)
        self.segx_maps: SegXMaps = _the_handler(explanation_handlers, SegXMaps)
        self.segu: SegUScores = _the_handler(explanation_handlers, SegUScores)
        self.network, self.multi_label = explain.explainer.model, explain.multi_label
        self.path, self.explainer_factory = Path(path), explainer_factory
        self.n_samples, self.n_steps, self.seed = n_samples, n_steps, seed
        self.layers = check_layers(self.network, layers)
        self.requires = (OutputKeys.IMAGE, OutputKeys.MAP, OutputKeys.EXPLAINED_CLASSES, OutputKeys.SEGX_MAP,
                         OutputKeys.REGION_MASK, self.segx_maps.region_key)
        self.pairs: list[dict] = []

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.STARTED, lambda _: self.pairs.clear())
        engine.add_event_handler(Events.COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        """Keep this iteration's explained pairs, on the CPU, until there are ``n_samples``."""
        for batch_item, item in self.items(engine):
            image_id = batch_item.get(Columns.IMAGE_ID)
            for n, target in enumerate(item[OutputKeys.EXPLAINED_CLASSES]):
                if len(self.pairs) == self.n_samples:
                    return
                self.pairs.append({
                    "image_id": None if image_id is None else str(image_id), "class": int(target),
                    "image": item[OutputKeys.IMAGE].detach().cpu(), "region": item[self.segx_maps.region_key].detach().cpu(),
                    "raw": item[OutputKeys.MAP][n].detach().cpu(), "segx": item[OutputKeys.SEGX_MAP][n].detach().cpu(),
                    "mask": item[OutputKeys.REGION_MASK][n].detach().cpu(),
                })

    def _scores(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The trained classifier's probability of each image's explained class, ``(B,)``."""
        with explaining(self.network), torch.no_grad():
            logits = self.network(images)
        probs = logits.sigmoid() if self.multi_label else logits.softmax(dim=1)
        return probs[torch.arange(len(classes), device=probs.device), classes]

    def _cascade(self, images: torch.Tensor, classes: torch.Tensor, trained: dict[str, torch.Tensor], regions: torch.Tensor,
                 masks: torch.Tensor) -> list[dict]:
        """Similarity of the randomised classifier's maps with the trained one's, and their SegU, per cascade step."""
        steps = []
        for step, (layer, network) in enumerate(randomized_cascade(self.network, self.layers, self.seed), start=1):
            raw = self.explainer_factory(network)(images, classes)
            maps = {"raw": raw, "segx": segx(raw, regions, **self.segx_maps.kwargs).heatmap}
            steps.append({"step": step, "layer": layer, "similarity": self._similarity(maps, trained, masks),
                          "segu": self._segu(raw, masks)})
        return steps

    def _similarity(self, maps: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], masks: torch.Tensor) -> dict:
        """Spearman and SSIM of each kind of map with the trained classifier's, and the Spearman of the SegX maps inside
        the region only (outside it both are 0, which alone makes whole SegX maps alike)."""
        similarity = {kind: {"spearman": mean_interval(spearman_correlation(maps[kind], trained[kind]), self.seed),
                             "ssim": mean_interval(map_ssim(maps[kind], trained[kind]), self.seed)} for kind in MAP_KINDS}
        in_region = spearman_correlation(maps["segx"], trained["segx"], masks)
        similarity["segx"]["spearman_in_region"] = mean_interval(in_region, self.seed)
        return similarity

    def _segu(self, maps: torch.Tensor, masks: torch.Tensor) -> dict[str, dict]:
        """Mean and interval of every SegU score of ``maps`` with the region ``masks``, as ``SegUScores`` computes them."""
        scores = certainty_scores(maps, masks, self.segu.q, self.segu.n_thresholds)
        return {name: mean_interval(scores[name], self.seed) for name in CERTAINTY_SCORES}

    def _deletion_insertion(self, images: torch.Tensor, classes: torch.Tensor, trained: dict[str, torch.Tensor]) -> dict:
        """Mean deletion and insertion curves and AUCs of the raw and SegX maps, and the paired SegX − raw AUC."""
        curves = {kind: deletion_insertion(lambda x: self._scores(x, classes), images, trained[kind], self.n_steps,
                                           DELETION_BASELINE) for kind in MAP_KINDS}
        out = {}
        for test in ("deletion", "insertion"):
            aucs = {kind: getattr(curves[kind], f"{test}_auc") for kind in MAP_KINDS}
            out[test] = {
                "fractions": curves["raw"].fractions.tolist(),
                **{kind: {"auc": mean_interval(aucs[kind], self.seed), "curve": getattr(curves[kind], test).mean(dim=0).tolist()}
                   for kind in MAP_KINDS},
                "difference": mean_interval(aucs["segx"] - aucs["raw"], self.seed),
            }
        return out

    def write(self, engine: Engine | None = None) -> None:
        """Run the checks on the kept pairs and write ``path`` (main rank only)."""
        if idist.get_rank() > 0:
            return
        settings = {
            "n_samples": self.n_samples, "n_steps": self.n_steps, "seed": self.seed, "layers": self.layers,
            "multi_label": self.multi_label, "deletion_baseline": DELETION_BASELINE,
            "insertion_blur_sigma": INSERTION_BLUR_SIGMA, "n_bootstrap": N_BOOTSTRAP, "segx": self.segx_maps.kwargs,
            "q": self.segu.q, "n_thresholds": self.segu.n_thresholds,
        }
        result = {"settings": settings, "n_pairs": len(self.pairs),
                  "pairs": [{"image_id": p["image_id"], "class": p["class"]} for p in self.pairs]}
        if self.pairs:
            device = next(self.network.parameters()).device
            images, regions, masks = (torch.stack([p[key] for p in self.pairs]).to(device) for key in ("image", "region", "mask"))
            classes = torch.tensor([p["class"] for p in self.pairs], device=device)
            trained = {kind: torch.stack([p[kind] for p in self.pairs]).to(device) for kind in MAP_KINDS}
            result["trained_segu"] = self._segu(trained["raw"], masks)
            result["cascade"] = self._cascade(images, classes, trained, regions, masks)
            result.update(self._deletion_insertion(images, classes, trained))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(result, indent=1, allow_nan=False))
