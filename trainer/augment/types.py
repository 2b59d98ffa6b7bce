"""What the augmentation passes hand around: the augmented pair with its pseudo-label, and the
random-number helpers every draw_* function shares (draws happen on the generator's device, then
move to the batch's device, so a CPU generator serves a CUDA batch and a test can replay a draw)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from unsamflow.pipeline.errors import BadInputError


@dataclass
class AugmentedPair:
    """A batch for a forward-only augmentation pass and its target.

    img1, img2 (B,3,H,W) float in [0,1]; flow (B,2,H,W) the pseudo-label; noc (B,1,H,W) float, 1 where
    the pseudo-label supervises; seg1, seg2 (B,H,W) int64 full_seg labels.
    """

    img1: torch.Tensor
    img2: torch.Tensor
    flow: torch.Tensor
    noc: torch.Tensor
    seg1: torch.Tensor
    seg2: torch.Tensor

    def __post_init__(self) -> None:
        b, _, h, w = _shape4(self.img1, "img1")
        want = {
            "img1": (b, 3, h, w),
            "img2": (b, 3, h, w),
            "flow": (b, 2, h, w),
            "noc": (b, 1, h, w),
            "seg1": (b, h, w),
            "seg2": (b, h, w),
        }
        for f in fields(self):
            t = getattr(self, f.name)
            if tuple(t.shape) != want[f.name]:
                raise BadInputError(
                    f"AugmentedPair.{f.name}: expected shape {want[f.name]}, got {tuple(t.shape)}"
                )

    @classmethod
    def build(
        cls,
        img1: torch.Tensor,
        img2: torch.Tensor,
        flow: torch.Tensor,
        noc: torch.Tensor,
        seg1: torch.Tensor,
        seg2: torch.Tensor,
    ) -> AugmentedPair:
        """Normalise dtypes and noc's shape: noc may be bool/float, (B,H,W) or (B,1,H,W)."""
        if noc.dim() == 3:
            noc = noc.unsqueeze(1)
        return cls(img1, img2, flow.to(img1.dtype), noc.to(img1.dtype), seg1.long(), seg2.long())

    @property
    def size(self) -> tuple[int, int]:
        return int(self.img1.shape[-2]), int(self.img1.shape[-1])


def _shape4(t: torch.Tensor, name: str) -> tuple[int, int, int, int]:
    if t.dim() != 4:
        raise BadInputError(f"{name}: expected a (B, C, H, W) tensor, got shape {tuple(t.shape)}")
    return tuple(t.shape)  # type: ignore[return-value]


def uniform(
    generator: torch.Generator, n: int, lo: float, hi: float, device: torch.device | str
) -> torch.Tensor:
    """n draws from U(lo, hi) on the generator's device, returned on `device` (float32)."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return (lo + (hi - lo) * u).to(device)


def coin(generator: torch.Generator, n: int, device: torch.device | str, p: float = 0.5) -> torch.Tensor:
    """n Bernoulli(p) draws (bool) on `device`."""
    return (torch.rand(n, generator=generator, device=generator.device) < p).to(device)


def noise_field(
    generator: torch.Generator, shape: tuple[int, ...], max_std: float, device: torch.device | str
) -> torch.Tensor:
    """Gaussian noise of `shape` (B, ...), each sample's std drawn from U(0, max_std), on `device`.

    Drawn with the generator itself (no seed read back), so a generator on the batch's device costs
    no host-device sync.
    """
    std = uniform(generator, shape[0], 0.0, max_std, generator.device)
    field = torch.randn(shape, generator=generator, device=generator.device)
    return field.mul_(std.view(-1, *([1] * (len(shape) - 1)))).to(device)
