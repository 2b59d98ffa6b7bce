"""PWC-Lite decoder heads, shared by all pyramid levels: the reduced dense estimator and context network."""

from __future__ import annotations

import torch
from torch import nn
from unsamflow.trainer.model.pyramid import conv


class FlowEstimatorReduced(nn.Module):
    """ARFlow's "reduced" dense estimator: widths 128,128,96,64,32, each conv seeing only the two before it.

    (The full DenseNet variant concatenates every earlier output; the reduced one is about 25% cheaper.)
    Returns the last 32-channel features (for the context network) and a residual flow.
    """

    def __init__(self, c_in: int):
        super().__init__()
        self.conv1 = conv(c_in, 128)
        self.conv2 = conv(128, 128)
        self.conv3 = conv(128 + 128, 96)
        self.conv4 = conv(128 + 96, 64)
        self.conv5 = conv(96 + 64, 32)
        self.predict_flow = conv(64 + 32, 2, relu=False)
        self.feat_channels = 32

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        x3 = self.conv3(torch.cat((x1, x2), 1))
        x4 = self.conv4(torch.cat((x2, x3), 1))
        x5 = self.conv5(torch.cat((x3, x4), 1))
        return x5, self.predict_flow(torch.cat((x4, x5), 1))


class ContextNetwork(nn.Module):
    """Dilated convs (1, 2, 4, 8, 16, 1) refining the flow; its 96-channel middle feeds the upsampler."""

    def __init__(self, c_in: int):
        super().__init__()
        self.body = nn.Sequential(
            conv(c_in, 128, dilation=1),
            conv(128, 128, dilation=2),
            conv(128, 128, dilation=4),
            conv(128, 96, dilation=8),
        )
        self.flow_head = nn.Sequential(
            conv(96, 64, dilation=16), conv(64, 32, dilation=1), conv(32, 2, relu=False)
        )
        self.feat_channels = 96

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (residual flow, 96-channel features)."""
        feat = self.body(x)
        return self.flow_head(feat), feat
