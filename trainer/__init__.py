"""unsamflow trainer: SAM-guided unsupervised optical flow (PWC-Lite, homography smoothness, +mf)."""

__version__ = "0.1.0"
