"""unsamflow trainer: SAM-guided unsupervised optical flow (PWC-Lite, homography smoothness, +mf)."""

from unsamflow import __version__

__all__ = ["__version__"]
