"""The flow network: PWC-Lite with learned upsampling and the optional mask feature module."""

from trainer.model.correlation import correlation
from trainer.model.mask_features import MaskFeatures, downsample_labels, region_max
from trainer.model.pwclite import PWCLite

__all__ = ["PWCLite", "MaskFeatures", "correlation", "downsample_labels", "region_max"]
