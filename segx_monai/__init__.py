"""segx-monai: segmentation-restricted explanations (SegX) and explanation certainty (SegU) for MONAI classifiers."""

from importlib import import_module

__version__ = "0.1.0"

_SUBPACKAGES = ("bundle", "core", "data", "explainers", "handlers", "io", "metrics", "networks", "report", "search", "utils")


def __getattr__(name: str):
    """Subpackages load on first use (``segx_monai.data`` in a bundle config), so that ``import segx_monai.core``
    needs torch and MONAI only, not the DICOM, data and engine stacks."""
    if name in _SUBPACKAGES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
