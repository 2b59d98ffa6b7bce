"""Shared feature pyramid of PWC-Lite (ARFlow): six stride-2 levels, 3-16-32-64-96-128-192 channels."""

from __future__ import annotations

import torch
from torch import nn

PYRAMID_CHANNELS = (3, 16, 32, 64, 96, 128, 192)


def conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, dilation: int = 1, relu: bool = True):
    """Same-padded conv, followed by LeakyReLU(0.1) unless ``relu`` is False (flow heads)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, dilation=dilation, padding=(kernel - 1) * dilation // 2)
    ]
    if relu:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class FeaturePyramid(nn.Module):
    """Image (B, 3, H, W) -> features at 1/2 .. 1/64, returned coarsest first (the decoder's order)."""

    def __init__(self, channels: tuple[int, ...] = PYRAMID_CHANNELS):
        super().__init__()
        self.channels = channels
        self.levels = nn.ModuleList(
            nn.Sequential(conv(c_in, c_out, stride=2), conv(c_out, c_out))
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats[::-1]
