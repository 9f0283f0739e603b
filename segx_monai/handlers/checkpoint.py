"""Epoch checkpoints that a killed training run resumes from, and the best model, both written so that a kill at any
moment leaves the previous complete file or the new complete one, never a truncated file under a real name."""

from __future__ import annotations

import copy
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

from segx_monai.utils.background import BackgroundWriter
from segx_monai.utils.files import sha256_file

logger = logging.getLogger(__name__)

_EPOCH = re.compile(r"_(\d+)\.pt$")
PREFIX = "resume"
PARTIAL_SUFFIX = ".partial"
_IGNITE_TEMP = re.compile(r"^tmp[a-z0-9_]{8}$")  # tempfile's names, as Ignite's own atomic DiskSaver leaves them


def epoch_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """The ``resume_checkpoint_N.pt`` files in ``ckpt_dir``, newest epoch N first."""
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).glob(f"{PREFIX}_*.pt") if (m := _EPOCH.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_epoch_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``resume_checkpoint_N.pt`` file with the largest epoch N in ``ckpt_dir``, if any."""
    found = epoch_checkpoints(ckpt_dir)
    return found[0] if found else None


def remove_partial_files(folder: str | Path, ignite_temp_files: bool = False, name: str = "*") -> list[Path]:
    """Delete the unfinished temporary files a killed save of ``name`` (any file by default) left in ``folder`` (and,
    in a folder of resume points only, ``ignite_temp_files``: the ``tmpXXXXXXXX`` files of Ignite's DiskSaver);
    returns them. Rank 0 only, the rank that saves."""
    folder = Path(folder)
    if idist.get_rank() != 0 or not folder.is_dir():
        return []
    found = [p for p in folder.glob(f".{name}.*{PARTIAL_SUFFIX}") if p.is_file()]
    if ignite_temp_files:
        found += [p for p in folder.iterdir() if _IGNITE_TEMP.match(p.name) and p.is_file()]
    for path in found:
        logger.warning("Removing %s, an unfinished file left by an interrupted save.", path)
        path.unlink(missing_ok=True)
    return found


def _first_line(error: Exception) -> str:
    """``Type: first line of the message`` (torch's load errors run over several lines, or are empty)."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}".rstrip(": ")


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` that writes a new file next to its target and renames it into place, and deletes a file
    that Ignite asks to remove only once the next save is complete (Ignite removes the old file before saving).

    ``filename``, when given, replaces the name Ignite makes (a fixed best-model file name, as MONAI's saver does).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs) -> None:
        super().__init__(dirname, atomic=True, require_empty=False, **kwargs)
        self.filename, self.saves, self._to_remove = filename, 0, []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        to_remove, self._to_remove = self._to_remove, []
        self._write(checkpoint, filename, metadata, to_remove)

    def _write(self, checkpoint: Mapping, filename: str, metadata: Mapping | None, to_remove: list[str]) -> None:
        """Save ``checkpoint``, then delete the files of ``to_remove``."""
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        if idist.get_rank() == self.save_on_rank:
            self.saves += 1
            for old in to_remove:
                if old != filename:
                    (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)

    def path(self, filename: str) -> Path:
        """Where a checkpoint that Ignite names ``filename`` is written."""
        return self.dirname / (self.filename or filename)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        # hand-written: Ignite's temporary file (tmpXXXXXXXX) cannot be told apart from other files when cleaning up
        # after a kill, and is not flushed to disk before the rename
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, delete=False) as tmp:
            try:
                func(checkpoint, tmp, **self.kwargs)
                tmp.flush()
                os.fsync(tmp.fileno())
            except BaseException:
                tmp.close()
                os.remove(tmp.name)
                raise
        os.chmod(tmp.name, os.stat(tmp.name).st_mode | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp.name, path)


def cpu_copy(state):
    """``state`` (nested dicts, lists and tuples) with its tensors copied to the CPU and the rest deep-copied: what the
    live objects hold at this moment, whatever they do next."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        copied = copy.copy(state)  # keeps the type and the attributes (a module state dict's _metadata)
        copied.update((key, cpu_copy(value)) for key, value in state.items())
        return copied
    if type(state) in (list, tuple):
        return type(state)(cpu_copy(value) for value in state)
    return copy.deepcopy(state)


class BackgroundDiskSaver(AtomicDiskSaver):
    """:class:`AtomicDiskSaver` writing from a :class:`BackgroundWriter`: the checkpoint is copied to the CPU
    (:func:`cpu_copy`) in the caller, which then goes on (training) while the file is written. A save first waits
    for the previous one, so one copy at most is in memory and files are written in order; ``writer`` is to be
    closed when the run ends (:meth:`BackgroundWriter.attach`), which raises a failed write's error.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, **kwargs) -> None:
        super().__init__(dirname, filename, **kwargs)
        self.writer = BackgroundWriter(max_pending=1, name=f"checkpoint writer ({self.dirname})")

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        to_remove, self._to_remove = self._to_remove, []
        if idist.get_rank() == self.save_on_rank:
            self.writer.flush()
            self.writer.submit(self._write, cpu_copy(checkpoint), filename, metadata, to_remove)


class BestModelSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) writing through :class:`AtomicDiskSaver`, and recording the epoch,
    key metric value and sha256 of the best model it wrote.

    Its ``state_dict``, saved with the resume checkpoint, holds that record; on resume ``load_state_dict`` checks
    that the file is the one recorded and loads with ``torch.load(weights_only=True)``, and sets the evaluator's
    ``best_metric``/``best_metric_epoch`` from it, so the log names the model's true epoch and value. A file that does
    not load, or was written after the resume point (a kill between the two saves), is reported and its record
    dropped: the next validated epoch writes a new best model.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        self.best, self.engine, self._removed_partial_files = {}, None, False
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=checkpoint.save_handler.filename)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self.engine = engine
        engine.add_event_handler(Events.STARTED, self.remove_partial_files)

    def remove_partial_files(self, engine: Engine) -> None:
        """At the first validation (the run holds its lock by then), the unfinished files of this saver's own file
        only: models/ is shared with other trainings writing theirs."""
        if not self._removed_partial_files:
            self._removed_partial_files = True
            remove_partial_files(self.save_dir, name=self._key_metric_checkpoint.save_handler.filename or "*")

    def metrics_completed(self, engine: Engine) -> None:
        handler = self._key_metric_checkpoint.save_handler
        saves = handler.saves
        super().metrics_completed(engine)
        if handler.saves > saves:
            name = engine.state.key_metric_name  # the evaluator's key metric, even when the saver ranks by another score
            path = handler.path(self._key_metric_checkpoint._saved[-1].filename)
            self.best = {"epoch": int(engine.state.epoch), "metric_name": name, "metric": float(engine.state.metrics[name]), "sha256": sha256_file(path)}
            logger.info("Best model -> %s (epoch %d, %s %.6g).", path, self.best["epoch"], name, self.best["metric"])
        if self.best:  # what the file holds, whatever else tracks the best epoch
            engine.state.best_metric, engine.state.best_metric_epoch = self.best["metric"], self.best["epoch"]

    def state_dict(self) -> dict:
        return {**self._key_metric_checkpoint.state_dict(), **self.best}

    def load_state_dict(self, state: dict) -> None:
        keys = ("epoch", "metric_name", "metric", "sha256")
        (saved_key,) = Checkpoint._state_dict_all_req_keys  # Ignite's name of the (priority, filename) list
        saved, best = list(state.get(saved_key, [])), {k: state[k] for k in keys if k in state}
        problem = None
        if saved:
            path = self._key_metric_checkpoint.save_handler.path(saved[-1][1])
            if len(best) < len(keys):
                problem = "the resume point does not record its epoch"
            elif not path.is_file():
                problem = "it is missing"
            else:
                try:
                    torch.load(path, map_location="cpu", weights_only=True)
                except Exception as e:
                    problem = f"it does not load ({_first_line(e)})"
                else:
                    if sha256_file(path) != best["sha256"]:
                        problem = "it is not the file the resume point records (written after it, by the interrupted epoch)"
            if problem:
                logger.warning("Best model %s: %s; its record is dropped and the next validated epoch writes a new one.", path, problem)
                saved, best = [], {}
            else:
                logger.info("Best model so far: %s (epoch %d, %s %.6g), checked to load.", path, best["epoch"], best["metric_name"], best["metric"])
        super().load_state_dict({saved_key: saved})
        self.best = best
        if self.engine is not None:
            self.engine.state.best_metric, self.engine.state.best_metric_epoch = best.get("metric", -1), best.get("epoch", -1)


class ResumableCheckpoint:
    """Save ``save_dict`` plus the trainer's own state after every epoch; at start, load the newest such file.

    The trainer is added when attached, so a bundle config need not reference the trainer from inside its own
    handler list (a circular reference for the config parser). When ``key_metric_saver`` (the validation's
    :class:`BestModelSaver`) is given, its record of the best model is saved and restored too, so an epoch after the
    restart that is worse than the best so far does not replace the best model.

    Each resume point is written after the epoch's other handlers (validation, learning-rate step), atomically, by a
    :class:`BackgroundDiskSaver` (the next epoch trains meanwhile; the run waits for the write when it completes or
    fails, and a failed write fails the run); the previous one is deleted only once it is complete. At start,
    unfinished files of a killed save are removed and a resume point that does not load is reported and the
    previous complete one used.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict,
        key_metric_saver: BestModelSaver | None = None,
        map_location: str = "cpu",
        enabled: bool = True,
    ) -> None:
        if not isinstance(enabled, bool):  # the command line gives `--resume false` as the text 'false', which is truthy
            raise TypeError(f"resume must be True or False, got {enabled!r}; on the command line write --resume False")
        self.save_dir, self.save_dict, self.map_location, self.enabled = Path(save_dir), dict(save_dict), map_location, enabled
        if key_metric_saver is not None:
            self.save_dict["key_metric_tracking"] = key_metric_saver
        self.saver: Checkpoint | None = None

    def attach(self, engine: Engine) -> None:
        to_save = {**self.save_dict, "trainer": engine}
        disk = BackgroundDiskSaver(self.save_dir)
        self.saver = Checkpoint(to_save, disk, filename_prefix=PREFIX, n_saved=1, global_step_transform=lambda e, _: e.state.epoch)
        engine.add_event_handler(Events.STARTED, self.start, to_save)
        disk.writer.attach(engine)

    def start(self, engine: Engine, to_load: dict) -> None:
        """Remove unfinished files, resume from the newest complete resume point (if enabled), and save one after each
        epoch, registered now so that it runs after every other epoch-end handler."""
        remove_partial_files(self.save_dir, ignite_temp_files=True)
        found = epoch_checkpoints(self.save_dir)
        if self.enabled:
            self.load_latest(engine, to_load, found)
        for path in found:  # older resume points go once the next one is complete
            self.saver.save_handler.remove(path.name)
        if not engine.has_event_handler(self.saver, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.saver)

    def load_latest(self, engine: Engine, to_load: dict, found: list[Path]) -> None:
        """Restore ``to_load`` from the newest of ``found`` that loads; report each one that does not."""
        for path in found:
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                logger.warning("Resume point %s does not load (%s); trying the previous one.", path, _first_line(e))
                continue
            missing = sorted(set(to_load) - set(saved))
            if missing:
                raise ValueError(
                    f"{path}: this resume point has no {', '.join(missing)} (written by an older version or another "
                    "config); expected every part this training saves: start over with --resume False, or move the "
                    f"folder {self.save_dir} away"
                )
            CheckpointLoader(load_path=str(path), load_dict=to_load, map_location=self.map_location)(engine)
            logger.info("Resumed from %s at epoch %d of %d.", path, engine.state.epoch, engine.state.max_epochs)
            return
        if found:
            logger.warning("No resume point in %s loads; training starts at epoch 1.", self.save_dir)


class TrainedModelLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments) whose failures name the file and what was expected: a missing or
    unreadable model stops the run before any data is read (torch reports a truncated file as a bare OS error)."""

    def __call__(self, engine: Engine) -> None:
        path = Path(self.load_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file; expected the file its training workflow writes (train it first, or set ckpt_dir)")
        try:
            super().__call__(engine)
        except Exception as e:
            raise ValueError(
                f"{path}: cannot be loaded ({_first_line(e)}); expected a complete checkpoint of this network, written by "
                "this bundle's training with the same network settings"
            ) from e
