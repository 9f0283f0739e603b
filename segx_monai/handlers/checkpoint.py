"""Epoch checkpoints that a killed training run resumes from, including the best-model tracking."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"_(\d+)\.pt$")
PREFIX = "resume"


def latest_epoch_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``resume_checkpoint_N.pt`` file with the largest epoch N in ``ckpt_dir``, if any."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob(f"{PREFIX}_*.pt") if (m := _EPOCH.search(p.name))]
    return max(found)[1] if found else None


class ResumableCheckpoint:
    """Save ``save_dict`` plus the trainer's own state after every epoch; at start, load the newest such file.

    The trainer is added when attached, so a bundle config need not reference the trainer from inside its own
    handler list (a circular reference for the config parser). When ``key_metric_saver`` (the validation's MONAI
    ``CheckpointSaver`` of the best model) is given, its best-score list is saved and restored too, so an epoch after
    the restart that is worse than the best so far does not replace the best model.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict,
        key_metric_saver: CheckpointSaver | None = None,
        map_location: str = "cpu",
        enabled: bool = True,
    ) -> None:
        if not isinstance(enabled, bool):  # the command line gives `--resume false` as the text 'false', which is truthy
            raise TypeError(f"resume must be True or False, got {enabled!r}; on the command line write --resume False")
        self.save_dir, self.save_dict, self.map_location, self.enabled = Path(save_dir), dict(save_dict), map_location, enabled
        if key_metric_saver is not None:
            self.save_dict["key_metric_tracking"] = _KeyMetricTracking(key_metric_saver)

    def attach(self, engine: Engine) -> None:
        to_save = {**self.save_dict, "trainer": engine}
        saver = Checkpoint(
            to_save, DiskSaver(str(self.save_dir), require_empty=False, atomic=True), filename_prefix=PREFIX, n_saved=1,
            global_step_transform=lambda e, _: e.state.epoch,
        )
        engine.add_event_handler(Events.STARTED, self.load_latest, to_save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, saver)

    def load_latest(self, engine: Engine, to_load: dict) -> None:
        """Restore ``to_load`` from the newest epoch checkpoint, if resuming is enabled and one exists."""
        path = latest_epoch_checkpoint(self.save_dir) if self.enabled else None
        if path is None:
            return
        CheckpointLoader(load_path=str(path), load_dict=to_load, map_location=self.map_location)(engine)
        logger.info("Resumed from %s at epoch %d of %d.", path, engine.state.epoch, engine.state.max_epochs)


class _KeyMetricTracking:
    """``state_dict``/``load_state_dict`` of a ``CheckpointSaver``'s best-score list; MONAI exposes only the loading half."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict:
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict(state)
