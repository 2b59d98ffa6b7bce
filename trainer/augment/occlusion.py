"""The occlusion pass's random crop: frames, pseudo-label, noc and full_seg cropped together.

The pseudo-label keeps the flow measured on the full frame, so pixels whose match leaves the crop
become "occluded" for the network while still supervised: that is what teaches occlusion. Each sample
gets its own crop window (one gather, no host sync).
"""

from __future__ import annotations

import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.augment.types import AugmentedPair


def draw_crop_params(
    generator: torch.Generator,
    batch: int,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(B, 2) int64 top-left corners (x0, y0), uniform over the windows that fit."""
    (h, w), (ch, cw) = in_size, out_size
    if ch > h or cw > w or ch < 1 or cw < 1:
        raise BadInputError(f"occlusion crop {ch}x{cw} does not fit frames of {h}x{w}")
    u = torch.rand(batch, 2, generator=generator, device=generator.device)
    span = torch.tensor([w - cw + 1, h - ch + 1], device=generator.device)
    return (u * span).long().clamp(max=span - 1).to(device)


def crop_batch(x: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x (B,C,H,W) or (B,H,W) cropped per sample at corners (B,2) (x0, y0) to size (h, w)."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    b, c, h_in, w_in = x.shape
    h, w = size
    rows = corners[:, 1, None] + torch.arange(h, device=x.device)
    cols = corners[:, 0, None] + torch.arange(w, device=x.device)
    idx = (rows[:, :, None] * w_in + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = x.reshape(b, c, h_in * w_in).gather(2, idx).view(b, c, h, w)
    return out[:, 0] if squeeze else out


def apply_crop(pair: AugmentedPair, corners: torch.Tensor, size: tuple[int, int]) -> AugmentedPair:
    """Crop every tensor of the pair at the same per-sample window."""
    corners = corners.to(pair.img1.device)
    return AugmentedPair(
        *(
            crop_batch(t, corners, size)
            for t in (pair.img1, pair.img2, pair.flow, pair.noc, pair.seg1, pair.seg2)
        )
    )


def occlusion_crop(pair: AugmentedPair, size: tuple[int, int], generator: torch.Generator) -> AugmentedPair:
    """Draw and apply a random crop of `size` (H, W) per sample (KITTI 192x640, Sintel 320x704)."""
    corners = draw_crop_params(generator, pair.img1.shape[0], pair.size, tuple(size), pair.img1.device)
    return apply_crop(pair, corners, tuple(size))
