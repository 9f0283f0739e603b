"""The bundles as the MONAI Model Zoo expects them: its conformance checks, offline, and distributable archives; the
checks every bundle run makes at ``initialize`` and the last line of a failed one (:mod:`segx_monai.bundle.errors`)."""

from segx_monai.bundle.archive import ArchiveError, pack, unpack, verify
from segx_monai.bundle.conformance import SCHEMA_FILE, check_bundle, validate_metadata
from segx_monai.bundle.errors import ConfigError, check_run

__all__ = ["ArchiveError", "ConfigError", "SCHEMA_FILE", "check_bundle", "check_run", "pack", "unpack", "validate_metadata", "verify"]
