"""segx-monai: segmentation-restricted explanations (SegX) and explanation certainty (SegU) for MONAI classifiers."""

__version__ = "0.1.0"

from segx_monai import core, data, explainers, handlers, io, metrics, networks
