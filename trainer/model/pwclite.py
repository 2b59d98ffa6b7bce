"""PWC-Lite (ARFlow) with learned convex upsampling and the optional mask feature module (UnSAMFlow +mf).

Both directions run in one pass: the pyramid sees [img1; img2] as one batch, and the decoder pairs that
batch with itself halves-swapped, so frame 1 -> 2 and 2 -> 1 share every convolution call.

Output: ``{"flows_fw": [...], "flows_bw": [...]}``, five flows each, finest first, of shapes
(B, 2, H / 2^i, W / 2^i) for i = 0..4: the decoder's flow at 1/4, 1/8 .. 1/64, each convex-upsampled x4.
Every flow is in pixels of its own resolution (x = channel 0, y = channel 1), and maps frame-1 pixels to
frame 2 (``flow_warp(img2, flows_fw[0])`` reconstructs img1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.model.correlation import correlation
from unsamflow.trainer.model.decoder import ContextNetwork, FlowEstimatorReduced
from unsamflow.trainer.model.mask_features import MaskFeatures
from unsamflow.trainer.model.pyramid import PYRAMID_CHANNELS, FeaturePyramid, conv
from unsamflow.trainer.model.upsample import ConvexUpsampler
from unsamflow.trainer.warp import flow_warp

SIZE_MULTIPLE = 64  # the coarsest pyramid level is 1/64
INITS = ("pytorch", "kaiming")


class PWCLite(nn.Module):
    """PWC-Lite flow network.

    Args:
        mask_features: add the mask feature module (+mf); ``forward`` then needs ``full_seg1/2``.
        search_range: cost-volume radius r ((2r+1)^2 channels); ARFlow uses 4.
        num_levels: decoder levels, coarse to fine from 1/64; 5 ends at 1/4, the published setting.
        corr_tile: pixels per GEMM run in the correlation (speed only; see correlation.py).
        init: "pytorch" (default) leaves PyTorch's default initialisation, which is what the reference
            trains from (its init_weights() iterates named_modules() tuples and changes nothing); its
            untrained flows are a few px. "kaiming" is ARFlow's intended He-normal weights with zero biases
            (untrained flows of ~100 px and more), kept to reproduce ARFlow-style runs.
        normalize_corr_features: centre and scale the features that enter each cost volume (see
            ``normalize_for_costs``), as UFlow does (Jonschkowski et al. 2020). Off in the reference. Why it
            exists: the reference's raw dot products are dominated by feature magnitude, so an untrained
            network's cost volume does not point at the motion and learning waits for the pyramid to
            become discriminative (a long plateau on a CPU budget; measured in benchmarks/bench_learning.py).
            Adds no weights: the same state dict loads either way, but the flows differ.
    """

    def __init__(
        self,
        mask_features: bool = False,
        search_range: int = 4,
        num_levels: int = 5,
        corr_tile: int = 16,
        init: str = "pytorch",
        normalize_corr_features: bool = False,
    ):
        super().__init__()
        if not 1 <= num_levels <= len(PYRAMID_CHANNELS) - 1:
            raise BadInputError(
                f"PWCLite: num_levels must be in 1..{len(PYRAMID_CHANNELS) - 1}, got {num_levels}"
            )
        self.search_range = search_range
        self.num_levels = num_levels
        self.normalize_corr_features = normalize_corr_features
        self.corr_tile = corr_tile
        self.pyramid = FeaturePyramid(PYRAMID_CHANNELS)
        level_channels = list(PYRAMID_CHANNELS[::-1][:num_levels])  # 192, 128, 96, 64, 32
        self.conv_1x1 = nn.ModuleList(conv(ch, 32, kernel=1) for ch in level_channels)
        self.mask_features = MaskFeatures(level_channels) if mask_features else None

        n_corr = (2 * search_range + 1) ** 2
        c_in = 32 + 2 + n_corr * (2 if mask_features else 1)
        self.estimator = FlowEstimatorReduced(c_in)
        self.context = ContextNetwork(self.estimator.feat_channels + 2)
        self.upsampler = ConvexUpsampler(self.context.feat_channels, scale=4)
        if init not in INITS:
            raise BadInputError(f"PWCLite: init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "kaiming":
            self._init_kaiming()

    def _init_kaiming(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self,
        img1: torch.Tensor,
        img2: torch.Tensor,
        full_seg1: torch.Tensor | None = None,
        full_seg2: torch.Tensor | None = None,
        with_bw: bool = True,
    ) -> dict[str, list[torch.Tensor]]:
        """Flows between images (B, 3, H, W) in [0, 1], H and W multiples of 64.

        ``full_seg1/2``: integer label maps (B, H, W), needed with mask features and ignored otherwise.
        ``with_bw=False`` skips the backward flow (inference), leaving out the "flows_bw" key.
        """
        self._check_inputs(img1, img2, full_seg1, full_seg2)
        b = img1.shape[0]
        feats = self.pyramid(torch.cat((img1, img2)))  # coarsest first; batch [frame 1; frame 2]
        labels = torch.cat((full_seg1, full_seg2)) if self.mask_features is not None else None

        def pair(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(source, target) batches: [1; 2] against [2; 1] for both directions, else 1 against 2."""
            if with_bw:
                return t, torch.cat((t[b:], t[:b]))
            return t[:b], t[b:]

        flows = self._decode(feats, labels, pair)
        if not with_bw:
            return {"flows_fw": flows}
        return {"flows_fw": [f[:b] for f in flows], "flows_bw": [f[b:] for f in flows]}

    def _decode(self, feats: list[torch.Tensor], labels: torch.Tensor | None, pair) -> list[torch.Tensor]:
        """Coarse-to-fine estimation; returns the upsampled flow of every level, finest first."""
        r, tile = self.search_range, self.corr_tile
        out: list[torch.Tensor] = []
        flow = None
        costs_of = normalize_for_costs if self.normalize_corr_features else _identity
        for level in range(self.num_levels):
            x1, x2 = pair(feats[level])
            c1, c2 = pair(costs_of(feats[level])) if self.normalize_corr_features else (x1, x2)
            if flow is None:
                flow = x1.new_zeros(x1.shape[0], 2, *x1.shape[-2:])
                warp = _identity
            else:
                flow = 2.0 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True)
                warp = _warper(flow)
            costs = [F.leaky_relu(correlation(c1, warp(c2), r, tile), 0.1)]
            if self.mask_features is not None:
                m1, m2 = pair(costs_of(self.mask_features(feats[level], labels, level)))
                costs.append(F.leaky_relu(correlation(m1, warp(m2), r, tile), 0.1))
            feat, residual = self.estimator(torch.cat((*costs, self.conv_1x1[level](x1), flow), 1))
            flow = flow + residual
            residual, context = self.context(torch.cat((feat, flow), 1))
            flow = flow + residual
            out.append(self.upsampler(flow, context))
        return out[::-1]

    def _check_inputs(self, img1, img2, full_seg1, full_seg2) -> None:
        for name, img in (("img1", img1), ("img2", img2)):
            if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
                shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise BadInputError(f"PWCLite: {name} must be an image batch (B, 3, H, W), got {shape}")
            if not img.is_floating_point():
                raise BadInputError(f"PWCLite: {name} must be a float tensor in [0, 1], got {img.dtype}")
        if img1.shape != img2.shape:
            raise BadInputError(
                f"PWCLite: img1 {tuple(img1.shape)} and img2 {tuple(img2.shape)} differ in shape"
            )
        b, _, h, w = img1.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
            raise BadInputError(
                f"PWCLite: image size {h}x{w} must be a positive multiple of {SIZE_MULTIPLE} in height and "
                f"width (pad or crop the frames, e.g. to {-(-h // 64) * 64}x{-(-w // 64) * 64})"
            )
        if self.mask_features is None:
            return
        for name, seg in (("full_seg1", full_seg1), ("full_seg2", full_seg2)):
            if seg is None:
                raise BadInputError(
                    f"PWCLite(mask_features=True) needs {name} (B, H, W) label maps, got None"
                )
            if seg.shape != (b, h, w):
                raise BadInputError(f"PWCLite: {name} is {tuple(seg.shape)}, must be (B, H, W) = {(b, h, w)}")
            if seg.is_floating_point() or seg.dtype == torch.bool or seg.is_complex():
                raise BadInputError(f"PWCLite: {name} must hold integer labels, got {seg.dtype}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _warper(flow: torch.Tensor):
    # Border padding, as the reference's decoder warps (its flow_warp default); the losses warp with zeros.
    return lambda x: flow_warp(x, flow, padding_mode="border")


def normalize_for_costs(feats: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Features (2B, C, h, w), frames 1 then 2, made ready for a cost volume that compares directions.

    Each pair's per-channel mean over both frames' pixels is subtracted (what every pixel shares says
    nothing about where it moved), then each pixel vector is scaled to unit RMS, so the correlation's
    channel mean is the cosine of the centred features. UFlow centres and scales by one global std; the
    per-pixel scale is what made an untrained pyramid's cost volume usable in our measurements.
    """
    # float32 under autocast (squares of fp16 features overflow); eps on the mean square keeps the gradient
    # finite where a pixel's centred vector is exactly 0 (a sqrt there has an infinite derivative)
    x = feats.float()
    b = x.shape[0] // 2
    mean = 0.5 * (x[:b].mean((2, 3), keepdim=True) + x[b:].mean((2, 3), keepdim=True))
    centred = x - torch.cat((mean, mean))
    return centred * torch.rsqrt(centred.pow(2).mean(1, keepdim=True) + eps)
