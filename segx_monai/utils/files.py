"""File digests shared by the archives, the checkpoints and the split fingerprints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def sha256_stream(f: BinaryIO) -> str:
    """The sha256 hex digest of a binary stream, read in 1 MB blocks."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file."""
    with open(path, "rb") as f:
        return sha256_stream(f)
