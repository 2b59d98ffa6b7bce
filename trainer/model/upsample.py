"""Learned convex upsampling of a flow field (RAFT): each fine pixel is a softmax-weighted mix of the
3x3 coarse neighbours of its parent, with weights predicted from decoder features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from unsamflow.trainer.model.pyramid import conv


class ConvexUpsampler(nn.Module):
    """flow (B, 2, h, w), features (B, c_in, h, w) -> flow (B, 2, s*h, s*w), values scaled by s."""

    def __init__(self, c_in: int = 96, scale: int = 4):
        super().__init__()
        self.scale = scale
        # The reference ends the logits with LeakyReLU(0.1) too (its conv() default); kept for parity.
        self.mask = nn.Sequential(conv(c_in, 128), conv(128, scale * scale * 9))

    def forward(self, flow: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        b, _, h, w = flow.shape
        s = self.scale
        # RAFT scales the logits by 0.25 to balance their gradients against the flow's.
        weights = torch.softmax(0.25 * self.mask(feat).view(b, 1, 9, s, s, h, w), dim=2)
        neighbours = F.unfold(s * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
        up = (weights * neighbours).sum(dim=2)  # (b, 2, s, s, h, w)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, s * h, s * w)
