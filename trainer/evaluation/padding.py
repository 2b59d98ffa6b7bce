"""Frames of any size in, flow of the same size out: padding to the network's multiple and test-size resizing.

PWC-Lite needs height and width divisible by 64. Two ways to get there, both undone exactly on the flow:
- pad (always, when needed): replicate the border pixels ("center": split the padding between both
  sides, the default, so borders are treated alike; "bottom-right": pad only after the image, so
  pixel (0, 0) stays put). Padding shifts both frames alike, so the flow needs only cropping.
- resize (optional, the method's test protocol: Sintel at 448x1024, KITTI at 256x832): the frames are
  resized bilinearly, the flow is resized back and its u / v scaled by the width / height ratios.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError

PAD_MODES = ("center", "bottom-right")
# The method's test sizes (H, W) by dataset-name prefix; other datasets run at native size (padded).
TEST_SIZES: dict[str, tuple[int, int]] = {"sintel": (448, 1024), "kitti": (256, 832)}


def default_test_size(dataset: str) -> tuple[int, int] | None:
    """The method's test size for a dataset name such as "kitti-2015-training", or None (native)."""
    for prefix, size in TEST_SIZES.items():
        if dataset.lower().startswith(prefix):
            return size
    return None


def parse_test_size(text: str, dataset: str) -> tuple[int, int] | None:
    """ "default" (per dataset), "native" (no resize) or "HxW"."""
    if text == "default":
        return default_test_size(dataset)
    if text == "native":
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInputError(
            f"--test-size must be default, native or HxW (e.g. 448x1024), got {text!r}"
        ) from None
    if h < 1 or w < 1:
        raise BadInputError(f"--test-size must be positive, got {text!r}")
    return h, w


class Padder:
    """Pads (B, C, H, W) batches to a multiple of `multiple` with replicated borders, and crops back."""

    def __init__(self, height: int, width: int, multiple: int = 64, mode: str = "center"):
        if mode not in PAD_MODES:
            raise BadInputError(f"padding mode must be one of {PAD_MODES}, got {mode!r}")
        ph, pw = -height % multiple, -width % multiple
        top, left = (ph // 2, pw // 2) if mode == "center" else (0, 0)
        self.size = (height, width)
        self.pad = (left, pw - left, top, ph - top)  # F.pad order: left, right, top, bottom

    @property
    def padded_size(self) -> tuple[int, int]:
        left, right, top, bottom = self.pad
        return self.size[0] + top + bottom, self.size[1] + left + right

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Pad an image batch (float) or a label batch (B, H, W) (integer: padded exactly)."""
        if not any(self.pad):
            return x
        if x.is_floating_point():
            return F.pad(x, self.pad, mode="replicate")
        left, right, top, bottom = self.pad
        arr = np.pad(x.cpu().numpy(), [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)], mode="edge")
        return torch.from_numpy(arr).to(x.device)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the padding on a (..., H', W') tensor."""
        left, _, top, _ = self.pad
        h, w = self.size
        return x[..., top : top + h, left : left + w]


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float batch (B, C, H, W) to size (H', W')."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_labels(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of integer labels (B, H, W): labels must not be blended."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    idx_h = ((torch.arange(size[0], device=x.device) + 0.5) * x.shape[-2] / size[0]).long()
    idx_w = ((torch.arange(size[1], device=x.device) + 0.5) * x.shape[-1] / size[1]).long()
    return x[..., idx_h, :][..., idx_w]


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a flow batch (B, 2, h, w) to (H, W) and scale its vectors to the new pixel units."""
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=out.dtype, device=out.device)
    return out * scale.view(1, 2, 1, 1)
