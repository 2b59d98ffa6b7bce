"""The flow network: PWC-Lite with learned upsampling and the optional mask feature module."""

from unsamflow.trainer.model.correlation import correlation
from unsamflow.trainer.model.mask_features import MaskFeatures, downsample_labels, region_max
from unsamflow.trainer.model.pwclite import PWCLite

__all__ = ["PWCLite", "MaskFeatures", "correlation", "downsample_labels", "region_max"]
