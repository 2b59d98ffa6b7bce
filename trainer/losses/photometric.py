"""Photometric reconstruction losses: L1, SSIM (3x3) and census (ternary), occlusion-masked, per level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.losses.occlusion import occlusion_fb, occlusion_range
from unsamflow.trainer.warp import flow_warp

LEVEL_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 0.0)


def ssim_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 over 3x3 windows (valid positions only), clamped to [0, 1]. Images in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sxx = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    syy = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sxy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return ((1 - num / den) / 2).clamp(0, 1)


def _census(image: torch.Tensor) -> torch.Tensor:
    """Soft 3x3 census transform of the grey image (intensities 0-255): (B, 9, H, W)."""
    grey = image.mean(1, keepdim=True) if image.shape[1] != 3 else (
        0.2989 * image[:, :1] + 0.5870 * image[:, 1:2] + 0.1140 * image[:, 2:]
    )
    grey = grey * 255.0
    eye = torch.eye(9, dtype=image.dtype, device=image.device).view(9, 1, 3, 3)
    diff = F.conv2d(grey, eye, padding=1) - grey
    return diff / torch.sqrt(0.81 + diff * diff)


def census_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Soft Hamming distance between 3x3 census transforms, (B, 1, H, W); the 1-px border is 0."""
    d = (_census(x) - _census(y)).square()
    dist = (d / (0.1 + d)).mean(1, keepdim=True)
    border = torch.zeros_like(dist)
    border[..., 1:-1, 1:-1] = 1.0
    return dist * border


def photometric_level(
    img1: torch.Tensor,
    recon1: torch.Tensor,
    visible1: torch.Tensor,
    *,
    w_l1: float = 0.15,
    w_ssim: float = 0.85,
    w_ternary: float = 0.0,
) -> torch.Tensor:
    """One level, one direction: masked L1/SSIM/census of img1 vs its reconstruction, / visible fraction."""
    loss = img1.new_zeros(())
    if w_l1 > 0:
        loss = loss + w_l1 * ((img1 - recon1).abs() * visible1).mean()
    if w_ssim > 0:
        loss = loss + w_ssim * ssim_distance(recon1 * visible1, img1 * visible1).mean()
    if w_ternary > 0:
        loss = loss + w_ternary * census_distance(recon1 * visible1, img1 * visible1).mean()
    return loss / (visible1.mean() + 1e-6)


def occlusion_masks(
    flow12: torch.Tensor, flow21: torch.Tensor, method: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(occ1, occ2), 1 = occluded, by "range" (splat of the other frame), "fb" (consistency) or None."""
    if method is None:
        z = torch.zeros_like(flow12[:, :1])
        return z, torch.zeros_like(flow21[:, :1])
    if method == "range":
        return occlusion_range(flow21), occlusion_range(flow12)
    if method == "fb":
        return occlusion_fb(flow12, flow21), occlusion_fb(flow21, flow12)
    raise BadInputError(f"occlusion method {method!r}: expected 'range', 'fb' or None")


def photometric_loss(
    img1: torch.Tensor,
    img2: torch.Tensor,
    flows12: Sequence[torch.Tensor],
    flows21: Sequence[torch.Tensor],
    *,
    occlusion: str | None = "range",
    level_weights: Sequence[float] = LEVEL_WEIGHTS,
    w_l1: float = 0.15,
    w_ssim: float = 0.85,
    w_ternary: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pyramid photometric loss, the mean of the forward and backward terms. Returns (loss, occ1, occ2).

    flows12/flows21: finest level first, each (B, 2, h_i, w_i) in that level's pixel units. Images
    are area-resized to each level and warped with border padding (the reference's warp_pad). Each
    level's loss is (forward + backward) / 2, as in ARFlow/UnSAMFlow (with_bk), so the weights of the
    other terms (w_ar, w_hg) keep their published meaning. Occlusion is estimated once at the finest
    level (no gradient) and nearest-resized to the others, as in ARFlow. Stage 0 of the method: w_l1
    0.15, w_ssim 0.85; from stage 1: w_ternary 1 and the others 0.
    """
    if len(flows12) != len(flows21):
        raise BadInputError(f"flows12 has {len(flows12)} levels but flows21 has {len(flows21)}")
    with torch.no_grad():
        occ1, occ2 = occlusion_masks(flows12[0].detach(), flows21[0].detach(), occlusion)
    total = img1.new_zeros(())
    kw = {"w_l1": w_l1, "w_ssim": w_ssim, "w_ternary": w_ternary}
    # fewer levels than weights is fine: the extra (coarsest) weights are unused
    for f12, f21, lw in zip(flows12, flows21, level_weights, strict=False):
        if lw == 0:
            continue
        size = f12.shape[-2:]
        i1 = img1 if img1.shape[-2:] == size else F.interpolate(img1, size, mode="area")
        i2 = img2 if img2.shape[-2:] == size else F.interpolate(img2, size, mode="area")
        v1 = 1 - (occ1 if occ1.shape[-2:] == size else F.interpolate(occ1, size, mode="nearest"))
        v2 = 1 - (occ2 if occ2.shape[-2:] == size else F.interpolate(occ2, size, mode="nearest"))
        level = photometric_level(i1, flow_warp(i2, f12, padding_mode="border"), v1, **kw)
        level = level + photometric_level(i2, flow_warp(i1, f21, padding_mode="border"), v2, **kw)
        total = total + lw * level / 2
    return total, occ1, occ2
