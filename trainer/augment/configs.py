"""The augmentation knobs as frozen dataclasses, and the reference values of method.md section 4.

They live here (not in trainer/config) so that augment has no dependency on the config schema; the
config module re-exports them. Ranges of the spatial pass are (global min, global max, relative min,
relative max); translation is (global, relative), a fraction of the half-size of the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from unsamflow.pipeline.errors import BadInputError


@dataclass(frozen=True)
class AppearanceConfig:
    """Colour jitter (torchvision ColorJitter ranges), gamma, blur and noise; one draw per pair.

    brightness/contrast/saturation b: factor in [1 - b, 1 + b]; hue h: shift in [-h, h] of a turn.
    gamma: (lo, hi) exponent range or None; blur: with probability 1/2 a Gaussian blur of sigma in
    [0, 3] px (ARFlow's RandomGaussianBlur); noise: additive Gaussian noise, std in [0, noise].
    """

    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1
    gamma: tuple[float, float] | None = None
    blur: bool = True
    noise: float = 0.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "noise"):
            if getattr(self, name) < 0:
                raise BadInputError(f"AppearanceConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise BadInputError(f"AppearanceConfig.hue must be in [0, 0.5], got {self.hue}")
        if self.gamma is not None and not (len(self.gamma) == 2 and 0 < self.gamma[0] <= self.gamma[1]):
            raise BadInputError(
                f"AppearanceConfig.gamma must be None or (lo, hi) with 0 < lo <= hi, got {self.gamma}"
            )


@dataclass(frozen=True)
class SpatialConfig:
    """The spatial pass: global affine + relative affine for frame 2, mirrors, additive noise.

    zoom z and squeeze s scale x by z*s and y by z/s; rotate in radians; noise: std in [0, noise]
    (ARFlow adds it after the transform). Defaults are the KITTI reference values.
    """

    zoom: tuple[float, float, float, float] = (1.0, 1.4, 0.99, 1.01)
    squeeze: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    rotate: tuple[float, float, float, float] = (-0.01, 0.01, -0.01, 0.01)
    translate: tuple[float, float] = (0.04, 0.005)
    hflip: bool = True
    vflip: bool = False
    noise: float = 0.04

    def __post_init__(self) -> None:
        for name in ("zoom", "squeeze", "rotate"):
            v = getattr(self, name)
            if len(v) != 4 or v[0] > v[1] or v[2] > v[3]:
                raise BadInputError(
                    f"SpatialConfig.{name} must be (g_lo, g_hi, r_lo, r_hi) with lo <= hi, got {v}"
                )
        for name in ("zoom", "squeeze"):
            if min(getattr(self, name)) <= 0:
                raise BadInputError(f"SpatialConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.translate) != 2 or min(self.translate) < 0:
            raise BadInputError(
                f"SpatialConfig.translate must be (global, relative) >= 0, got {self.translate}"
            )
        if self.noise < 0:
            raise BadInputError(f"SpatialConfig.noise must be >= 0, got {self.noise}")


@dataclass(frozen=True)
class KeyObjectConfig:
    """The semantic (+aug) augmentation: cache size, objects pasted per sample, motion scale range."""

    cache_size: int = 100
    per_sample: int = 3
    motion_scale: tuple[float, float] = (0.8, 1.5)
    min_area_frac: float = 0.005
    # Tracks (`pipeline track`): key objects only among those whose track reaches the pair's frame 2,
    # and a pasted object's motion from its track (its own displacement to frame 2) instead of the mean
    # predicted flow in its mask. Both off, as in the reference; both need tracked stores.
    require_track: bool = False
    track_motion: bool = False

    def __post_init__(self) -> None:
        if self.cache_size < 1 or self.per_sample < 0:
            raise BadInputError(
                f"KeyObjectConfig: cache_size must be >= 1 and per_sample >= 0, got "
                f"{self.cache_size}, {self.per_sample}"
            )
        if not 0 < self.motion_scale[0] <= self.motion_scale[1]:
            raise BadInputError(f"KeyObjectConfig.motion_scale must be 0 < lo <= hi, got {self.motion_scale}")


SPATIAL_PRESETS: dict[str, SpatialConfig] = {
    "kitti": SpatialConfig(),
    "sintel": SpatialConfig(
        zoom=(1.0, 1.5, 0.985, 1.015),
        squeeze=(0.86, 1.16, 1.0, 1.0),
        rotate=(-0.2, 0.2, -0.015, 0.015),
        translate=(0.2, 0.015),
        hflip=True,
        vflip=True,
    ),
}
"""Reference spatial-pass values (method.md section 4)."""

CROP_PRESETS: dict[str, tuple[int, int]] = {"kitti": (192, 640), "sintel": (320, 704)}
"""Reference occlusion-pass crop sizes (H, W)."""
