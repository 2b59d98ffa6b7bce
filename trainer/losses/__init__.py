"""Unsupervised flow losses: photometric, occlusion, smoothness and homography smoothness."""

from unsamflow.trainer.losses.homography import RANSAC_THRESH, homography_loss, homography_loss_fwbw
from unsamflow.trainer.losses.occlusion import occlusion_fb, occlusion_range, range_map
from unsamflow.trainer.losses.photometric import (
    census_distance,
    occlusion_masks,
    photometric_level,
    photometric_loss,
    ssim_distance,
)
from unsamflow.trainer.losses.smoothness import image_edge_weights, seg_edge_weights, smooth_1st, smooth_2nd

__all__ = [
    "RANSAC_THRESH",
    "census_distance",
    "homography_loss",
    "homography_loss_fwbw",
    "image_edge_weights",
    "occlusion_fb",
    "occlusion_masks",
    "occlusion_range",
    "photometric_level",
    "photometric_loss",
    "range_map",
    "seg_edge_weights",
    "smooth_1st",
    "smooth_2nd",
    "ssim_distance",
]
