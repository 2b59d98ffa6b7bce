"""Edge-aware first- and second-order flow smoothness, with image edges or segmentation edges."""

from __future__ import annotations

import torch


def _dx(t: torch.Tensor) -> torch.Tensor:
    return t[..., :, 1:] - t[..., :, :-1]


def _dy(t: torch.Tensor) -> torch.Tensor:
    return t[..., 1:, :] - t[..., :-1, :]


def image_edge_weights(
    image: torch.Tensor, alpha: float = 10.0, step: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (wx, wy) = exp(-alpha * mean |image gradient|) over `step`-pixel differences.

    step 1 fits first-order terms; step 2 fits second-order terms (which span two pixels).
    """
    gx = (image[..., :, step:] - image[..., :, :-step]).abs().mean(1, keepdim=True)
    gy = (image[..., step:, :] - image[..., :-step, :]).abs().mean(1, keepdim=True)
    return torch.exp(-alpha * gx), torch.exp(-alpha * gy)


def seg_edge_weights(
    seg: torch.Tensor, step: int = 1, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (wx, wy): 1 inside a region, 0 across a label boundary. seg: (B, 1, H, W) labels."""
    wx = (seg[..., :, step:] == seg[..., :, :-step]).to(dtype)
    wy = (seg[..., step:, :] == seg[..., :-step, :]).to(dtype)
    return wx, wy


def smooth_1st(flow: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean edge-weighted |first derivative| of flow (B, 2, H, W); weights from *_edge_weights(step=1)."""
    wx, wy = weights
    return ((wx * _dx(flow).abs()).mean() + (wy * _dy(flow).abs()).mean()) / 2.0


def smooth_2nd(flow: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean edge-weighted |second derivative| of flow; weights from *_edge_weights(step=2)."""
    wx, wy = weights
    return ((wx * _dx(_dx(flow)).abs()).mean() + (wy * _dy(_dy(flow)).abs()).mean()) / 2.0
