"""Co-transforms of one sample: the same crop and flips for frames, label maps, key masks and GT flow.

Only integer crops and flips (plus the frame-order swap), so label maps and masks stay exact
("nearest" by construction) and flow stays exact: a horizontal flip mirrors the field and negates u,
a vertical flip negates v, a crop only slices. Appearance changes and the ARFlow affine pass are the
engine's (trainer/augment, on the batch).

A sample's randomness is drawn once into a `Plan` (so the dataset knows, before reading the stores,
whether frame 2 becomes frame 1 and whose key objects to read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from unsamflow.pipeline.errors import BadInputError


@dataclass(frozen=True)
class CoTransformConfig:
    """crop: (H, W) of a random crop (None: whole frames, which must then share one size per batch);
    hflip / vflip: mirror with probability 1/2; swap: exchange the frames with probability 1/2.

    Ground-truth forward flow of a swapped pair is unknown (only the backward flow would do), so a
    swapped sample's GT is marked all invalid; use swap only for training (sets with GT are for
    evaluation, which runs with every option off)."""

    crop: tuple[int, int] | None = None
    hflip: bool = False
    vflip: bool = False
    swap: bool = False

    def __post_init__(self) -> None:
        if self.crop is not None:
            crop = tuple(int(c) for c in self.crop)
            if len(crop) != 2 or min(crop) < 1:
                raise BadInputError(f"crop must be (height, width) of positive integers, got {self.crop!r}")
            object.__setattr__(self, "crop", crop)


@dataclass(frozen=True)
class Plan:
    """What one sample gets: swap the frames, then crop [top:top+height, left:left+width], then flip."""

    swap: bool
    top: int
    left: int
    height: int
    width: int
    hflip: bool
    vflip: bool


def draw_plan(cfg: CoTransformConfig, shape: tuple[int, int], rng: np.random.Generator,
              frame: str = "") -> Plan:
    """One sample's transform for frames of `shape` (H, W); a fixed number of draws, always in one order."""
    h, w = shape
    ch, cw = cfg.crop or (h, w)
    if ch > h or cw > w:
        raise BadInputError(f"frame {frame!r} is {w}x{h}, smaller than the crop {cw}x{ch}")
    u = rng.random(3)
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return Plan(swap=cfg.swap and bool(u[0] < 0.5), top=top, left=left, height=ch, width=cw,
                hflip=cfg.hflip and bool(u[1] < 0.5), vflip=cfg.vflip and bool(u[2] < 0.5))


def apply(x: np.ndarray, plan: Plan, channels_last: bool = False) -> np.ndarray:
    """Crop and flip an array whose last two axes are (H, W), or (H, W, C) when channels_last."""
    yx = (x.ndim - 3, x.ndim - 2) if channels_last else (x.ndim - 2, x.ndim - 1)
    index = [slice(None)] * x.ndim
    index[yx[0]] = slice(plan.top, plan.top + plan.height)
    index[yx[1]] = slice(plan.left, plan.left + plan.width)
    out = x[tuple(index)]
    if plan.vflip:
        out = np.flip(out, yx[0])
    if plan.hflip:
        out = np.flip(out, yx[1])
    return out


def apply_flow(flow: np.ndarray, plan: Plan) -> np.ndarray:
    """Crop and flip an (H, W, 2) flow field: mirroring x negates u, mirroring y negates v."""
    out = np.array(apply(flow, plan, channels_last=True), np.float32)  # a copy: signs change below
    if plan.hflip:
        out[..., 0] *= -1
    if plan.vflip:
        out[..., 1] *= -1
    return out
