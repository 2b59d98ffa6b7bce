"""Appearance augmentation: colour jitter, gamma, Gaussian blur and additive noise, per pair.

Both frames of a sample get the same draw (ARFlow jitters the two frames side by side as one image),
so brightness constancy between them still holds; samples of the batch get independent draws.
Brightness, contrast, saturation and hue are all linear in the colour, so they are fused into one
affine colour map per pair (one batched matmul, one clamp): torchvision clamps after each step (and
shuffles their order), which differs only where an intermediate value saturates. Hue is a rotation of
the chroma plane in YIQ space, the linear counterpart of HSV's hue shift for the small shifts used.
The blur runs only on the samples drawn for it (their index is known on the host at draw time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.augment.configs import AppearanceConfig
from unsamflow.trainer.augment.types import coin, noise_field, uniform

BLUR_PROBABILITY = 0.5
BLUR_MAX_SIGMA = 3.0  # px (ARFlow: PIL GaussianBlur radius in [0, 3] with probability 1/2)
BLUR_RADIUS = 6  # taps each side: 2 sigma at the largest sigma (kernel renormalised)
_GREY = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


@dataclass
class AppearanceParams:
    """One draw for a batch; every field (B,) on the batch's device. None = that step is off."""

    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # fraction of a turn
    gamma: torch.Tensor | None
    blur_sigma: torch.Tensor | None  # 0 = no blur for that sample
    noise: torch.Tensor | None  # (B, 2, 3, H, W) additive noise
    blur_index: torch.Tensor | None = None  # samples to blur (known when drawn on the host); None: all


def draw_appearance_params(
    generator: torch.Generator,
    batch: int,
    cfg: AppearanceConfig,
    device: torch.device | str = "cpu",
    size: tuple[int, int] | None = None,
) -> AppearanceParams:
    """Draw the jitter factors for `batch` pairs of frames of `size` (H, W) (needed for noise only)."""
    b, c, s = cfg.brightness, cfg.contrast, cfg.saturation
    params = AppearanceParams(
        brightness=uniform(generator, batch, 1 - b, 1 + b, device).clamp(min=0),
        contrast=uniform(generator, batch, 1 - c, 1 + c, device).clamp(min=0),
        saturation=uniform(generator, batch, 1 - s, 1 + s, device).clamp(min=0),
        hue=uniform(generator, batch, -cfg.hue, cfg.hue, device),
        gamma=uniform(generator, batch, *cfg.gamma, device) if cfg.gamma is not None else None,
        blur_sigma=None,
        noise=None,
    )
    if cfg.blur:
        on = coin(generator, batch, device, BLUR_PROBABILITY)
        sigma = uniform(generator, batch, 0.0, BLUR_MAX_SIGMA, generator.device) * on.to(generator.device)
        params.blur_sigma = sigma.to(device)
        if sigma.device.type == "cpu":  # skip unblurred samples; on a device, blur all (no sync)
            params.blur_index = (sigma > 0).nonzero()[:, 0].to(device)
    if cfg.noise > 0:
        if size is None:
            raise BadInputError("draw_appearance_params: noise needs the frame size (size=(H, W))")
        params.noise = noise_field(generator, (batch, 2, 3, *size), cfg.noise, device)
    return params


def apply_appearance(
    img1: torch.Tensor, img2: torch.Tensor, params: AppearanceParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one draw to a batch of pairs (B,3,H,W) in [0,1]: the fused colour map (brightness,
    contrast, saturation, hue), then gamma, blur and noise, each result clamped to [0,1]."""
    if img1.shape != img2.shape or img1.dim() != 4 or img1.shape[1] != 3:
        raise BadInputError(
            f"appearance: img1 and img2 must both be (B,3,H,W), got {tuple(img1.shape)} and "
            f"{tuple(img2.shape)}"
        )
    b = img1.shape[0]
    x = torch.stack((img1, img2), 1)  # (B, 2, 3, H, W): one draw per pair

    def v(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, 1, 1, 1, 1).to(x.dtype)

    m, offset = _colour_map(x, params)
    x = torch.matmul(m.unsqueeze(1), x.flatten(-2)).view_as(x).add_(offset).clamp_(0, 1)
    if params.gamma is not None:
        x = x.pow(v(params.gamma))
    if params.blur_sigma is not None:
        idx = params.blur_index
        if idx is None:
            x = _blur(x, params.blur_sigma)
        elif idx.numel():
            x = x.index_copy(0, idx, _blur(x[idx], params.blur_sigma[idx]))
    if params.noise is not None:
        x = (x + params.noise.to(x.device, x.dtype)).clamp_(0, 1)
    return x[:, 0], x[:, 1]


def appearance(
    img1: torch.Tensor, img2: torch.Tensor, cfg: AppearanceConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw and apply: the appearance augmentation of the main pass."""
    b, _, h, w = img1.shape
    return apply_appearance(img1, img2, draw_appearance_params(generator, b, cfg, img1.device, (h, w)))


def _colour_map(x: torch.Tensor, params: AppearanceParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(M (B,3,3), offset (B,1,3,1,1)) with hue(saturation(contrast(brightness(x)))) = M x + offset.

    brightness b: b x; contrast c: c y + (1 - c) mean(grey y) over the pair; saturation s:
    s y + (1 - s) grey(y); hue: YIQ^-1 R YIQ. A grey vector is fixed by saturation and hue, so the
    contrast offset passes through unchanged.
    """
    dev, b = x.device, x.shape[0]
    grey = torch.tensor(_GREY, device=dev)
    mean = (x.float().mean(dim=(1, 3, 4)) @ grey) * params.brightness.float()  # (B,)
    ang = 2 * math.pi * params.hue.float()
    cos, sin, zero, one = ang.cos(), ang.sin(), torch.zeros_like(ang), torch.ones_like(ang)
    rot = torch.stack((one, zero, zero, zero, cos, -sin, zero, sin, cos), 1).view(b, 3, 3)
    hue = _YIQ2RGB.to(dev) @ rot @ _RGB2YIQ.to(dev)
    s = params.saturation.float().view(b, 1, 1)
    sat = s * torch.eye(3, device=dev) + (1 - s) * grey.view(1, 1, 3).expand(b, 3, 3)
    c = params.contrast.float()
    m = (c * params.brightness.float()).view(b, 1, 1) * (hue @ sat)
    offset = ((1 - c) * mean).view(b, 1, 1, 1, 1).expand(b, 1, 3, 1, 1)
    return m.to(x.dtype), offset.to(x.dtype)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma (sigma 0: identity), reflect padding."""
    b, t, c, h, w = x.shape
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=x.device, dtype=torch.float32)
    s = sigma.float().clamp(min=1e-3).view(b, 1)
    k = torch.exp(-0.5 * (taps / s) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(x.dtype)  # (B, 2R+1)
    k = k.repeat_interleave(t * c, dim=0)  # one kernel per (sample, frame, channel)
    y = x.reshape(1, b * t * c, h, w)
    r = min(BLUR_RADIUS, h - 1, w - 1)
    if r < BLUR_RADIUS:  # tiny frames: crop the kernel to what reflect padding allows
        k = k[:, BLUR_RADIUS - r : BLUR_RADIUS + r + 1]
        k = k / k.sum(1, keepdim=True)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(-1, 1, 1, 2 * r + 1), groups=b * t * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(-1, 1, 2 * r + 1, 1), groups=b * t * c)
    return y.view(b, t, c, h, w)
