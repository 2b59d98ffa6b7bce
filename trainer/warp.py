"""Backward warping by a flow field: the one sampling primitive the network and losses share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mesh_grid(b: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates (B, 2, H, W): channel 0 is x, channel 1 is y."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack((xs, ys)).unsqueeze(0).expand(b, 2, h, w)


def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample x (B, C, H, W) at p + flow(p) (bilinear): brings frame 2 onto frame 1's grid."""
    b, _, h, w = flow.shape
    pos = mesh_grid(b, h, w, flow.device, flow.dtype) + flow
    # align_corners=True: pixel centres at integer coordinates 0..W-1, as the flow is defined.
    gx = 2.0 * pos[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * pos[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
