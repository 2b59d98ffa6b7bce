"""Co-transforms of one sample: the same crop and flips for frames, label maps, key masks and GT flow.

Besides an optional resize of whole frames (labels and masks nearest), only integer crops and flips
(plus the frame-order swap), so label maps and masks stay exact ("nearest" by construction) and flow
stays exact: a horizontal flip mirrors the field and negates u,
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
    """resize: (H, W) every frame is first resized to (bilinear; labels and key masks nearest), as the
    reference does for KITTI (whole frames zoomed to 256 x 832, the test size, no crop); None: native.
    crop: (H, W) of a random crop (None: whole frames, which must then share one size per batch);
    hflip / vflip: mirror with probability 1/2; swap: exchange the frames with probability 1/2.

    Ground-truth forward flow of a swapped pair is unknown (only the backward flow would do), so a
    swapped sample's GT is marked all invalid; use swap only for training (sets with GT are for
    evaluation, which runs with every option off)."""

    crop: tuple[int, int] | None = None
    hflip: bool = False
    vflip: bool = False
    swap: bool = False
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("crop", "resize"):
            value = getattr(self, name)
            if value is not None:
                size = tuple(int(c) for c in value)
                if len(size) != 2 or min(size) < 1:
                    raise BadInputError(f"{name} must be (height, width) of positive integers, got {value!r}")
                object.__setattr__(self, name, size)

    def size_of(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (H, W) a frame of `shape` has after the resize (before the crop)."""
        return self.resize if self.resize is not None else (int(shape[0]), int(shape[1]))


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


def resize_array(x: np.ndarray, size: tuple[int, int], channels_last: bool = False) -> np.ndarray:
    """Nearest resize of labels or masks whose last two axes are (H, W) (or (H, W, C)) to size."""
    yx = (x.ndim - 3, x.ndim - 2) if channels_last else (x.ndim - 2, x.ndim - 1)
    h, w = x.shape[yx[0]], x.shape[yx[1]]
    if (h, w) == tuple(size):
        return x
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64)
    return np.take(np.take(x, rows, axis=yx[0]), cols, axis=yx[1])


def resize_flow_array(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of an (H, W, 2) flow field (sparse GT stays exact), u / v scaled to the new size."""
    h, w = flow.shape[:2]
    out = np.array(resize_array(flow, size, channels_last=True), np.float32)
    out[..., 0] *= size[1] / w
    out[..., 1] *= size[0] / h
    return out
