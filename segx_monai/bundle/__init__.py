"""The bundles as the MONAI Model Zoo expects them: its conformance checks, offline, and distributable archives."""

from segx_monai.bundle.archive import ArchiveError, pack, unpack, verify
from segx_monai.bundle.conformance import SCHEMA_FILE, check_bundle, validate_metadata

__all__ = ["ArchiveError", "SCHEMA_FILE", "check_bundle", "pack", "unpack", "validate_metadata", "verify"]
