"""Networks of the bundles."""

from segx_monai.networks import classifiers, segmenters
