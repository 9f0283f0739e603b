"""The studies the MONAI Label app reads: only those of its datastore.

MONAI Label itself takes as a study any path the server can read (``image=/etc/...``, ``../``, or a datastore file that
is a symlink to elsewhere); the app refuses them. Standard library only, so that it is tested without MONAI Label.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath


class StudyRefused(ValueError):
    """A study that is not one of the datastore's; the message names the study and why it is refused."""


def check_study_id(study: str, datastore_dir: str | Path) -> None:
    """Refuse a study given as a path instead of a datastore id (ids are file names or series UIDs, without ``/``)."""
    if PurePosixPath(study).is_absolute() or PureWindowsPath(study).is_absolute():
        why = "an absolute path"
    elif ".." in PurePosixPath(study.replace("\\", "/")).parts:
        why = "a path with a '..' component"
    elif "/" in study or "\\" in study:
        why = "a path"
    else:
        return
    raise StudyRefused(f"study {study!r} is {why}, not a study id of the datastore {datastore_dir}; refused")


def inside_datastore(study: str, path: str | Path, datastore_dir: str | Path) -> Path:
    """``path``, a file (or series folder) of ``study``, with symlinks resolved; refused unless it lies in the datastore."""
    resolved, root = Path(path).resolve(), Path(datastore_dir).resolve()
    if not resolved.is_relative_to(root):
        where = "" if str(resolved) == study else f" ({resolved})"
        raise StudyRefused(f"study {study!r}{where} lies outside the datastore {root}; refused")
    return resolved
