"""An output folder written under another name beside it and renamed into place when complete (stage and swap).

A run killed at any moment leaves either the previous complete folder or the new complete one under the output's
name, never new files beside old ones (e.g. new maps beside an old report).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import ignite.distributed as idist

logger = logging.getLogger(__name__)


def replace_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` to a file beside ``path``, then renamed into place: a kill leaves the old file or the new."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path.write_text(text)`` through a file beside it renamed into place: a kill leaves the old text or the new."""
    replace_atomic(path, lambda partial: partial.write_text(text))


class StagedDirectory:
    """``staging`` (``.<name>.partial`` beside ``path``) is where a run writes; used as a context manager, it is set
    up at entry (after the run's lock is taken) and, when the block ends without error, swapped with ``path``: the
    previous folder is moved aside (``.<name>.old``), the new one renamed into place, then the previous one deleted.
    On error the staging folder is kept as ``.<name>.failed`` (replacing an older one) and ``path`` left as it was.

    Entry also repairs what a killed run left: a staging folder is deleted; an old folder is put back if ``path``
    is missing (killed between the two renames), deleted otherwise. In a distributed run only rank 0 sets up and
    swaps; the other ranks write into the same staging folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.staging_path = self.path.with_name(f".{self.path.name}.partial")
        self.old_path = self.path.with_name(f".{self.path.name}.old")
        self.failed_path = self.path.with_name(f".{self.path.name}.failed")

    @property
    def staging(self) -> str:
        """The staging folder, as text for config expressions (``@x.staging + '/samples.csv'``)."""
        return str(self.staging_path)

    def __enter__(self) -> StagedDirectory:
        if idist.get_rank() != 0:
            return self
        if self.old_path.exists():
            if self.path.exists():
                logger.warning("Removing %s, the previous output of an interrupted swap.", self.old_path)
                shutil.rmtree(self.old_path)
            else:
                logger.warning("Restoring %s from %s: a run was killed while replacing it.", self.path, self.old_path)
                os.replace(self.old_path, self.path)
        if self.staging_path.exists():
            logger.warning("Removing %s, the unfinished output of an interrupted run.", self.staging_path)
            shutil.rmtree(self.staging_path)
        self.staging_path.mkdir(parents=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if idist.get_rank() != 0:
            return
        if exc_type is not None:  # kept aside, not deleted: the rows a long run finished before failing stay readable
            shutil.rmtree(self.failed_path, ignore_errors=True)
            os.replace(self.staging_path, self.failed_path)
            logger.warning("The unfinished output of this failed run is in %s; %s is left as it was.", self.failed_path, self.path)
            return
        if self.path.exists():
            os.replace(self.path, self.old_path)
        os.replace(self.staging_path, self.path)
        if self.old_path.exists():
            shutil.rmtree(self.old_path)
