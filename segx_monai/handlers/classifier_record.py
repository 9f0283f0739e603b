"""Which classifier weights a counterfactual generator was trained against: recorded in its weights file and resume
points, checked before it explains, since a generator is only valid for the classifier it was trained to fool."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from torch import nn

from segx_monai.data.fingerprint import SplitRecord, WeightsWithSplit, _short
from segx_monai.utils.files import sha256_file

CLASSIFIER_RECORD = "segx_classifier"  # key of the record in a generator weights file's root state-dict metadata
RETRAIN = "rerun train_counterfactual.yaml to train a generator against these classifier weights"


class ClassifierRecord:
    """The sha256 of ``classifier_file``, read once (the weights the training loaded), saved by a checkpoint saver's
    ``save_dict``; loading it back (a resumed run) against other classifier weights is an error."""

    def __init__(self, classifier_file: str | Path) -> None:
        self.classifier_file, self._sha256 = Path(classifier_file), None

    def state_dict(self) -> dict:
        if self._sha256 is None:
            self._sha256 = sha256_file(self.classifier_file)
        return {"classifier_file": str(self.classifier_file.resolve()), "sha256": self._sha256}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("sha256") != self.state_dict()["sha256"]:
            raise ValueError(
                f"the resume point was trained against classifier weights {_short(state.get('sha256'))} "
                f"({state.get('classifier_file')}), but classifier_file {self.classifier_file} now holds "
                f"{_short(self._sha256)}: start a new generator training with --resume False."
            )


class WeightsWithClassifier(WeightsWithSplit):
    """:class:`WeightsWithSplit` of a generator whose state-dict metadata also carries its :class:`ClassifierRecord`."""

    def __init__(self, network: nn.Module, record: SplitRecord, classifier: ClassifierRecord) -> None:
        super().__init__(network, record)
        self.classifier = classifier

    def state_dict(self) -> dict:
        state = super().state_dict()
        state._metadata[""][CLASSIFIER_RECORD] = self.classifier.state_dict()
        return state


def check_generator(generator_file: str | Path, classifier_file: str | Path) -> None:
    """Refuse ``generator_file`` unless it records the classifier weights ``classifier_file`` holds now."""
    state = torch.load(generator_file, map_location="cpu", weights_only=True)
    record = (getattr(state, "_metadata", None) or {}).get("", {}).get(CLASSIFIER_RECORD)
    if record is None:
        raise ValueError(f"generator_file {generator_file} records no classifier weights it was trained against; {RETRAIN} "
                         f"(classifier_file {classifier_file}).")
    current = sha256_file(classifier_file)
    if record["sha256"] != current:
        raise ValueError(
            f"generator_file {generator_file} was trained against other classifier weights ({_short(record['sha256'])}, "
            f"{record['classifier_file']}) than classifier_file {classifier_file} holds ({_short(current)}); {RETRAIN}."
        )


class CheckGeneratorClassifier:
    """When an engine starts, :func:`check_generator`: a counterfactual explanation uses a generator trained against
    the classifier it explains (attach after the loaders, which report a missing file first)."""

    def __init__(self, generator_file: str | Path, classifier_file: str | Path) -> None:
        self.generator_file, self.classifier_file = generator_file, classifier_file

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        check_generator(self.generator_file, self.classifier_file)
