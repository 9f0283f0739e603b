"""A classifier's test metrics apart on the images whose acquisition artefacts agree with the training fold's
artefact-class association and on those where they do not: a shortcut through the artefacts scores high on the first
and low on the second (e.g. a reversed synthetic set, whose artefacts all disagree)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from segx_monai.data.datalist import ARTEFACT_KEY
from segx_monai.handlers.writers import IterationHandler
from segx_monai.metrics.artefacts import artefact_agreement, artefact_association, auroc_by_agreement

logger = logging.getLogger(__name__)


def artefact_names(value: str | Sequence[str] | None) -> set[str]:
    """An item's artefacts as a set of names: a datalist value is a list, or a string with ';' between names."""
    names = value.split(";") if isinstance(value, str) else value or []
    return {name.strip() for name in names if name.strip()}


def presence(artefact_sets: Sequence[set[str]], names: Sequence[str]) -> torch.Tensor:
    """``(N, A)`` whether each item's artefacts include each of ``names``."""
    return torch.tensor([[name in found for name in names] for found in artefact_sets], dtype=torch.bool).reshape(len(artefact_sets), len(names))


def label_vector(label, num_classes: int) -> torch.Tensor:
    """``(K,)`` 0/1 labels of an item: a class index made one-hot, a multi-hot list kept."""
    label = torch.as_tensor(label)
    return torch.nn.functional.one_hot(label.long().reshape(()), num_classes) if label.numel() == 1 and num_classes > 1 else label.reshape(-1)


class ArtefactAgreementMetrics(IterationHandler):
    """When the epoch ends, adds to ``engine.state.metrics``: ``<prefix>auroc_artefact_agrees`` and ``_disagrees``
    (per class, :func:`~segx_monai.metrics.artefacts.auroc_by_agreement`), their means over classes
    (``<prefix>macro_auroc_artefact_agrees`` / ``_disagrees``) and ``<prefix>artefact_agreement``, the share of images
    agreeing for every associated class. Associations come from ``training_items``. Nothing is added when
    ``test_items`` record no artefacts (a segmenter's, a data set without them), nor, with a warning saying why, when
    only ``training_items`` record none."""

    requires = ("pred", "label")

    def __init__(self, test_items: Sequence[dict], training_items: Sequence[dict], num_classes: int,
                 class_names: Sequence[str] = (), prefix: str = "test_", id_key: str = "image_id") -> None:
        self.artefacts = {item[id_key]: artefact_names(item[ARTEFACT_KEY]) for item in test_items if ARTEFACT_KEY in item}
        self.training_items = [item for item in training_items if ARTEFACT_KEY in item]
        self.num_classes, self.class_names, self.prefix, self.id_key = num_classes, list(class_names), prefix, id_key
        self.seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []

    def attach(self, engine: Engine) -> None:
        if not self.artefacts:
            return
        if not self.training_items:
            logger.warning("The test items record artefacts but the training fold does not: no artefact-class association "
                           "to score agreement with, so no artefact metrics.")
            return
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.seen.clear())
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.compute)

    def __call__(self, engine: Engine) -> None:
        for batch_item, item in self.items(engine):
            pred, label = (torch.as_tensor(item[key]).detach().cpu().as_subclass(torch.Tensor) for key in ("pred", "label"))
            self.seen.append((batch_item[self.id_key], pred.double(), label))

    def compute(self, engine: Engine) -> None:
        if not self.seen:  # every test image skipped (skip_bad_samples)
            return
        training_artefacts = [artefact_names(i[ARTEFACT_KEY]) for i in self.training_items]
        names = sorted(set().union(*training_artefacts))
        training_labels = torch.stack([label_vector(i["label"], self.num_classes) for i in self.training_items])
        association = artefact_association(training_labels, presence(training_artefacts, names))
        logger.info("Artefact associated with each class in the training fold: %s.", ", ".join(
            f"{self.class_names[k] if self.class_names else k} {names[a] if a >= 0 else '(none)'}" for k, a in enumerate(association.tolist())))
        ids, probs, labels = zip(*self.seen)
        probs, labels = torch.stack(probs), torch.stack(labels).reshape(len(ids), -1)
        agree = artefact_agreement(labels, presence([self.artefacts.get(i, set()) for i in ids], names), association)
        agrees, disagrees = auroc_by_agreement(probs, labels, agree, association)
        associated = association >= 0
        engine.state.metrics.update({
            f"{self.prefix}auroc_artefact_agrees": agrees,
            f"{self.prefix}auroc_artefact_disagrees": disagrees,
            f"{self.prefix}macro_auroc_artefact_agrees": agrees.nanmean(),
            f"{self.prefix}macro_auroc_artefact_disagrees": disagrees.nanmean(),
            f"{self.prefix}artefact_agreement": agree[:, associated].all(1).double().mean() if associated.any() else torch.tensor(torch.nan),
        })
