"""Networks of the bundles."""

from segx_monai.networks import classifiers, counterfactual, patchnet, segmenters
from segx_monai.networks.patchnet import PatchNet
