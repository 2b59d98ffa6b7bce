"""Occlusion masks from flow: forward-backward consistency and the range map (1 = occluded)."""

from __future__ import annotations

import torch
from unsamflow.trainer.warp import flow_warp, mesh_grid


def occlusion_fb(
    flow12: torch.Tensor, flow21: torch.Tensor, alpha1: float = 0.01, alpha2: float = 0.5
) -> torch.Tensor:
    """Occlusion of frame 1 by forward-backward consistency, (B, 1, H, W) float in {0, 1}.

    A pixel is occluded when following f12 and then f21 does not come back:
    |f12 + f21(x + f12)|^2 > alpha1 (|f12|^2 + |f21(x + f12)|^2) + alpha2.
    """
    back = flow_warp(flow21, flow12)
    mag = flow12.square().sum(1, keepdim=True) + back.square().sum(1, keepdim=True)
    diff = (flow12 + back).square().sum(1, keepdim=True)
    return (diff > alpha1 * mag + alpha2).to(flow12.dtype)


def range_map(flow21: torch.Tensor) -> torch.Tensor:
    """How much of frame 2 lands on each pixel of frame 1 under f21 (bilinear splat), (B, 1, H, W)."""
    b, _, h, w = flow21.shape
    pos = (mesh_grid(b, h, w, flow21.device, flow21.dtype) + flow21).reshape(b, 2, -1)
    x, y = pos[:, 0], pos[:, 1]
    x0, y0 = x.floor(), y.floor()
    out = torch.zeros(b, h * w + 1, dtype=flow21.dtype, device=flow21.device)  # last: off-image sink
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            idx = torch.where(inside, yi * w + xi, torch.full_like(xi, h * w)).long()
            out.scatter_add_(1, idx, torch.where(inside, wgt, torch.zeros_like(wgt)))
    return out[:, : h * w].reshape(b, 1, h, w)


def occlusion_range(flow21: torch.Tensor, thresh: float = 0.2) -> torch.Tensor:
    """Occlusion of frame 1: pixels that frame 2's pixels (moved by f21) cover less than `thresh`."""
    return (range_map(flow21).clamp(0.0, 1.0) < thresh).to(flow21.dtype)
