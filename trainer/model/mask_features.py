"""Mask feature module (+mf of UnSAMFlow): features pooled over full-segmentation regions.

At each decoder level a 1x1 conv projects the pyramid features to 32 channels; within each region of the
full segmentation (nearest-downsampled to the level) the channel-wise maximum over the region's pixels,
floored at 0 as the reference's one-hot pooling does, is broadcast back to the region, and a shared 1x1
conv aggregates [projection, region max] ("concat"). The decoder correlates these mask-aware features
of frame 1 with those of warped frame 2 as a second cost volume.

Region pooling is one ``scatter_reduce('amax')`` over ids that number the (image, label) pairs 0..G-1 for
the whole batch, so it costs the same for 2 regions or 2,000, and labels may be any integers (a store's
labels need not be consecutive or small).
"""

from __future__ import annotations

import torch
from torch import nn
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.model.pyramid import conv

MASK_CHANNELS = 32


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of integer label maps (N, H, W) to ``size``, as F.interpolate('nearest').

    Done by integer indexing rather than interpolate on floats, which would round labels above 2^24.
    """
    h, w = labels.shape[-2:]
    rows = (torch.arange(size[0], device=labels.device) * h) // size[0]
    cols = (torch.arange(size[1], device=labels.device) * w) // size[1]
    return labels[:, rows[:, None], cols[None, :]]


def region_ids(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Number the distinct (image, label) pairs of label maps (N, h, w): ids 0..G-1, and G.

    Two ``unique`` calls instead of one on ``n * (max_label + 1) + label``, which would overflow int64 for
    huge labels.
    """
    values, inv = torch.unique(labels, return_inverse=True)
    n = labels.shape[0]
    per_image = inv + torch.arange(n, device=labels.device).view(n, 1, 1) * values.numel()
    uniq, ids = torch.unique(per_image, return_inverse=True)
    return ids, uniq.numel()


def region_max(feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per pixel, the channel-wise max of ``feat`` (N, C, h, w) over its region of ``labels`` (N, h, w).

    Regions are per image: equal labels in two images of the batch are different regions. Gradients go to
    the maximising pixels (split evenly between ties).
    """
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise BadInputError(f"region_max: labels must be an integer tensor, got {labels.dtype}")
    if feat.dim() != 4 or labels.shape != (feat.shape[0], *feat.shape[2:]):
        raise BadInputError(
            f"region_max: labels {tuple(labels.shape)} must be (N, h, w) of features {tuple(feat.shape)}"
        )
    n, c, h, w = feat.shape
    if labels.numel() == 0:
        return feat.clone()
    ids, g = region_ids(labels.long())
    flat = feat.permute(0, 2, 3, 1).reshape(-1, c)
    index = ids.reshape(-1, 1).expand(-1, c)
    pooled = flat.new_zeros(g, c).scatter_reduce(0, index, flat, reduce="amax", include_self=False)
    return pooled[ids.reshape(-1)].view(n, h, w, c).permute(0, 3, 1, 2)


class MaskFeatures(nn.Module):
    """Mask-aware 32-channel features for each decoder level: per-level projection, shared aggregation."""

    def __init__(self, level_channels: list[int] | tuple[int, ...]):
        super().__init__()
        self.project = nn.ModuleList(conv(ch, MASK_CHANNELS, kernel=1) for ch in level_channels)
        self.aggregate = conv(2 * MASK_CHANNELS, MASK_CHANNELS, kernel=1)

    def forward(self, feat: torch.Tensor, labels: torch.Tensor, level: int) -> torch.Tensor:
        """feat (N, C_level, h, w), labels (N, H, W) at any resolution -> (N, 32, h, w)."""
        x = self.project[level](feat)
        # The reference pools with amax over one-hot products, which is max(0, region max): a region whose
        # maximum is negative gives 0 and no gradient. Kept for parity (it produced the published numbers).
        pooled = region_max(x, downsample_labels(labels, x.shape[-2:])).clamp_min(0.0)
        return self.aggregate(torch.cat((x, pooled), 1))
