"""What a saved split was made from, checked at every later use of it and recorded in every checkpoint trained on it.

A datalist's ``meta["fingerprint"]`` holds the split settings (seed, fractions, indexer version), the sha256 of each
metadata file (``HAM10000_metadata.csv``, ``train.json``/``test.json``) and the sorted list of image files, plus one
sha256 over all three. Masks are left out, so that masks added later attach to the saved split (:func:`attach_masks`)
instead of invalidating it. Models trained on a split carry its fingerprint (:class:`SplitRecord`: in resume points'
``save_dict``, and in a best-model file's state-dict metadata through :class:`WeightsWithSplit`), and
:class:`CheckSplit` refuses to evaluate or interpret them on another split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.networks.utils import get_state_dict

from segx_monai.data.datalist import DatasetError
from segx_monai.utils.files import sha256_file

logger = logging.getLogger(__name__)

FINGERPRINT = "fingerprint"  # key of the fingerprint in a datalist's meta
RECORD = "split"  # key of the split record in a resume point (and in best-model files of older versions)
WEIGHTS_RECORD = "segx_split"  # key of the split record in a weights file's root state-dict metadata
EXAMPLES = 3


class StaleSplitError(DatasetError):
    """A saved split that no longer matches its data or settings, or a model trained on another split."""


def _name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when below it, else absolute: how the fingerprint names a file."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def make_fingerprint(root: str | Path, settings: Mapping, metadata_files: Sequence[str | Path], images: Sequence[str]) -> dict:
    """``{"settings", "metadata" {file: sha256}, "images" [sorted], "sha256"}`` of a split of the data set in ``root``."""
    body = {
        "settings": dict(settings),
        "metadata": {_name(Path(p), Path(root)): sha256_file(p) for p in metadata_files},
        "images": sorted(images),
    }
    return {**body, "sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def _examples(names: Sequence[str]) -> str:
    return ", ".join(sorted(names)[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")


def describe_changes(saved: Mapping, current: Mapping) -> list[str]:
    """What differs between two fingerprints, one phrase per part (settings, metadata, image list)."""
    changes = []
    settings = [f"{k} {saved['settings'].get(k)!r} -> {current['settings'].get(k)!r}"
                for k in sorted(set(saved["settings"]) | set(current["settings"])) if saved["settings"].get(k) != current["settings"].get(k)]
    if settings:
        changes.append("settings: " + ", ".join(settings))
    metadata = [f"{name} {'added' if name not in saved['metadata'] else 'removed' if name not in current['metadata'] else 'edited'}"
                for name in sorted(set(saved["metadata"]) | set(current["metadata"])) if saved["metadata"].get(name) != current["metadata"].get(name)]
    if metadata:
        changes.append("metadata: " + ", ".join(metadata))
    before, now = set(saved["images"]), set(current["images"])
    added, removed = sorted(now - before), sorted(before - now)
    if added or removed:
        parts = ([f"{len(added)} added ({_examples(added)})"] if added else []) + ([f"{len(removed)} removed ({_examples(removed)})"] if removed else [])
        changes.append("image list: " + ", ".join(parts))
    return changes


def read_datalist(datalist_file: str | Path) -> dict:
    """A datalist file's content; an unreadable one is a :class:`DatasetError` naming it."""
    try:
        return json.loads(Path(datalist_file).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{datalist_file}: not a readable datalist ({e}); delete it to index the data set again.") from e


def check_saved_split(
    datalist_file: str | Path, current: Mapping, dataset_dir: str | Path, explain: Callable[[dict], list[str]] | None = None
) -> None:
    """Refuse a saved split whose fingerprint differs from ``current`` (what ``dataset_dir`` and the settings give now);
    ``explain(datalist content)`` may add phrases on what changed in the metadata (rows changed, added)."""
    content = read_datalist(datalist_file)
    saved = content.get("meta", {}).get(FINGERPRINT)
    if saved is not None and saved.get("sha256") == current["sha256"]:
        return
    if saved is None:
        problem = f"the saved split records no fingerprint (written by an older version) to check against {dataset_dir}"
    else:
        changes = describe_changes(saved, current)
        details = explain(content) if explain is not None and saved["metadata"] != current["metadata"] else []
        if details:  # after the metadata phrase, which comes first unless settings changed too
            index = next(i for i, change in enumerate(changes) if change.startswith("metadata:"))
            changes[index] += " (" + "; ".join(details) + ")"
        problem = f"the saved split no longer matches {dataset_dir} and this run's settings: {'; '.join(changes)}"
    raise StaleSplitError(
        f"{datalist_file}: {problem}. "
        "Models trained on the saved split belong with it, and a new split needs new models: to split again, delete or "
        f"move {datalist_file} and train again, or use another --bundle_root; to keep the saved split, restore the data "
        "and settings it was made from."
    )


def attach_masks(
    datalist_file: str | Path, masks: Mapping[str, str], mask_key: str, check: Callable[[dict, str], None] | None = None,
    id_key: str = "image_id",
) -> int:
    """Give every item of the saved split the mask ``masks[item[id_key]]`` found now (or none), moving no item between
    folds; ``check(item, mask)`` vets a mask new to an item. Rewrites the file (atomically) only when something changed;
    returns the number of items changed."""
    content = read_datalist(datalist_file)
    changed = 0
    for fold in ("training", "validation", "test"):
        for item in content.get(fold, []):
            mask = masks.get(item[id_key])
            if item.get(mask_key) == mask:
                continue
            if mask is None:
                del item[mask_key]
            else:
                if check is not None:
                    check(item, mask)
                item[mask_key] = mask
            changed += 1
    if changed:
        path = Path(datalist_file)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump(content, f, indent=1)
        os.replace(f.name, path)
        logger.info("%s: %d item(s) of the saved split got a new or no %s; no item moved between folds.", path, changed, mask_key)
    return changed


class SplitRecord:
    """The split a model is trained on, saved with it by a checkpoint saver's ``save_dict`` (``state_dict``); loading it
    back (a resumed run) on another split is an error.

    ``datalist_file`` is read only when the record is saved or checked, so the record costs nothing where no split is
    used (inference on given images); ``None`` stands for data outside any saved split, described by ``dataset_dir``.
    """

    def __init__(self, datalist_file: str | Path | None, dataset_dir: str | Path) -> None:
        self.datalist_file, self.dataset_dir = datalist_file, dataset_dir

    def state_dict(self) -> dict:
        fingerprint = None
        if self.datalist_file is not None and Path(self.datalist_file).is_file():
            fingerprint = read_datalist(self.datalist_file).get("meta", {}).get(FINGERPRINT, {}).get("sha256")
        return {
            "fingerprint": fingerprint,
            "dataset_dir": str(Path(self.dataset_dir).resolve()) if self.datalist_file is not None else str(self.dataset_dir),
            "datalist": str(Path(self.datalist_file).resolve()) if self.datalist_file is not None else None,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.check(state, "the resume point", "start a new training on this split with --resume False, or use another --bundle_root")

    def check(self, state: Mapping, what: str, advice: str = "pass the --dataset_dir (and split settings) it was trained "
              "with, or train a new model on this split") -> None:
        """Refuse ``state`` (a saved record of ``what``) when it names another split than this one; ``advice`` says what to do."""
        own = self.state_dict()
        if state.get("fingerprint") is not None and state.get("fingerprint") == own["fingerprint"]:
            return
        raise StaleSplitError(
            f"{what} was trained on split {_short(state.get('fingerprint'))} of {state.get('dataset_dir')} (datalist "
            f"{state.get('datalist')}), but this run reads split {_short(own['fingerprint'])} of {own['dataset_dir']} "
            f"(datalist {own['datalist']}): its test fold may hold images the model was trained on; {advice}."
        )


class WeightsWithSplit:
    """A checkpoint saver's view of ``network`` whose state dict carries ``record`` in its metadata (``_metadata[""]``,
    which ``load_state_dict`` ignores): the saved file stays a plain state dict, loadable strictly into the network by
    MONAI's and the Model Zoo's tools, and still names the split it was trained on."""

    def __init__(self, network: torch.nn.Module, record: SplitRecord) -> None:
        self.network, self.record = network, record

    def state_dict(self) -> dict:
        state = get_state_dict(self.network)  # a DistributedDataParallel model's own module, as MONAI's saver does
        state._metadata[""] = {**state._metadata.get("", {}), WEIGHTS_RECORD: self.record.state_dict()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        self.network.load_state_dict(state)


def saved_split(checkpoint: Mapping) -> Mapping | None:
    """The split record a loaded weights file carries (a plain state dict's metadata, or the older ``{"model",
    "split"}`` layout), or ``None`` when it records none."""
    metadata = getattr(checkpoint, "_metadata", None) or {}
    if WEIGHTS_RECORD in metadata.get("", {}):
        return metadata[""][WEIGHTS_RECORD]
    return checkpoint.get(RECORD) if isinstance(checkpoint, Mapping) else None


def _short(fingerprint: str | None) -> str:
    return fingerprint[:12] if fingerprint else "(none)"


class CheckSplit:
    """When an evaluator starts, refuse any of ``checkpoints`` trained on another split than ``record``'s.

    With ``images`` (an inference input), the check applies only when every image is in the test set (the default
    input): the saved split's test fold, or the test fold of ``test_datalist`` (an external test set's, its paths
    relative to ``test_dataset_dir``); images from elsewhere need no split. A checkpoint that records no split (written
    by an older version) is used with a warning, since it cannot be checked.
    """

    def __init__(
        self, checkpoints: str | Path | Sequence[str | Path], record: SplitRecord, images: str | Sequence[str] | None = None,
        test_datalist: str | Path | None = None, test_dataset_dir: str | Path | None = None,
    ) -> None:
        self.checkpoints = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        self.record, self.images = record, images
        self.test_datalist = test_datalist if test_datalist is not None else record.datalist_file
        self.test_dataset_dir = test_dataset_dir if test_dataset_dir is not None else record.dataset_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def applies(self) -> bool:
        """Whether the images to process are the test set's images (always, without ``images``)."""
        if self.images is None:
            return True
        datalist = self.test_datalist
        if datalist is None or not Path(datalist).is_file() or isinstance(self.images, (str, Path)):
            return False
        test = {(Path(self.test_dataset_dir) / i["image"]).resolve() for i in read_datalist(datalist).get("test", [])}
        return all(Path(i).resolve() in test for i in self.images)

    def __call__(self, engine: Engine) -> None:
        if not self.applies():
            return
        for path in self.checkpoints:
            record = saved_split(torch.load(path, map_location="cpu", weights_only=True))
            if record is None:
                logger.warning("%s records no split (written by an older version): cannot check that it was not trained "
                               "on images of this test fold; train it again to record its split.", path)
                continue
            self.record.check(record, str(path))
