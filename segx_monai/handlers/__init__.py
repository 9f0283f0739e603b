"""Ignite/MONAI engine handlers: checkpoint resume, best-model selection, SegX/SegU and localization metrics.

``contract`` names the output keys and sample-table columns they share. Modules load on first use, so that reading
those names needs none of the engine, DICOM or plotting stacks.
"""

from importlib import import_module
from pkgutil import iter_modules


def __getattr__(name: str):
    """``segx_monai.handlers.<module>`` (in a bundle config expression) imports that module."""
    if name in {module.name for module in iter_modules(__path__)}:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
