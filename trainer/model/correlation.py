"""Local cost volume (FlowNet/PWC "correlation", kernel 1) in pure PyTorch, as strided matrix products.

For every pixel p of frame 1 and displacement d in [-r, r]^2 the cost is ``mean_c x1[c, p] * x2[c, p + d]``
(x2 is zero outside the image), giving (2r+1)^2 channels ordered row-major over (dy, dx), as the CUDA
layer used by FlowNet/ARFlow orders them.

The obvious implementation loops over the 81 shifts: 81 elementwise products and channel sums, each
streaming the whole feature map through memory, and as many again in backward. Instead both maps are laid
out channels-last in one flat buffer of pixel vectors whose rows are padded with r zero columns and whose
images are separated by r+1 zero rows. In that layout a pixel's neighbour at (dy, dx) sits at a fixed flat
offset ``dy * row + dx``, and everything outside an image reads as zero. Cutting the flat frame-1 buffer into
runs of T pixels, the T+2r frame-2 vectors a run sees at one dy are T+2r consecutive rows of the frame-2
buffer: a matrix that is a strided *view*, so one batched GEMM per dy (9 in all) computes every pair a run
can see, with no copy of the features, and a diagonal band of each product is the wanted 2r+1 costs.
Backward is the same GEMMs transposed (see ``_Correlation.backward``). The products waste (T+2r)/(2r+1) of
the arithmetic (about 2.7x at T=16) but run at GEMM speed: benchmarks/bench_correlation.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from unsamflow.pipeline.errors import BadInputError


class _Layout:
    """Geometry of the flat, zero-separated channels-last buffers for (B, C, H, W) maps."""

    def __init__(self, b: int, h: int, w: int, r: int, tile: int):
        self.b, self.h, self.w, self.r = b, h, w, r
        self.t = max(tile, 2 * r, 1)  # backward's spill of a window into the next run needs T >= 2r
        self.row = w + r  # r zero columns close every row (and serve as the next row's left border)
        self.gap = r + 1  # zero rows before each image: its top border and the previous image's bottom
        self.image = (h + self.gap) * self.row
        self.n = -(-b * self.image // self.t)  # runs of T pixels covering every image
        self.front = r * self.row + r  # frame-2 buffer starts this early so window offsets stay >= 0

    def scatter(self, x: torch.Tensor, front: int = 0) -> torch.Tensor:
        """x (B, C, H, W) -> zero buffer (front + n*T + front, C) with the pixels at their flat positions."""
        buf = x.new_zeros(self.n * self.t + 2 * front, x.shape[1])
        self.pixels(buf, front).copy_(x.permute(0, 2, 3, 1))
        return buf

    def pixels(self, buf: torch.Tensor, front: int = 0) -> torch.Tensor:
        """The (B, H, W, C) view of a buffer's image pixels (``front`` rows of lead-in skipped)."""
        body = buf[front : front + self.b * self.image]
        return body.view(self.b, self.h + self.gap, self.row, -1)[:, self.gap :, : self.w]


class _Correlation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor, r: int, tile: int) -> torch.Tensor:
        b, c, h, w = x1.shape
        lay = _Layout(b, h, w, r, tile)
        t, k = lay.t, 2 * r + 1
        a = lay.scatter(x1)  # (n*T, C); run j is rows j*T .. j*T+T-1
        # Frame 2 lies `front` rows later, so the window of run j at dy index i starts at row j*T + i*row.
        x2buf = lay.scatter(x2, front=lay.front)
        runs = a.view(lay.n, t, c)
        out = a.new_empty(lay.n, t, k, k)
        for i in range(k):
            win = _windows(x2buf, lay, i, c)  # (n, T+2r, C) view into x2buf
            pairs = torch.baddbmm(a.new_empty(()), runs, win.transpose(1, 2), beta=0.0, alpha=1.0 / c)
            out[:, :, i].copy_(_band(pairs, k))
        ctx.save_for_backward(a, x2buf)
        ctx.lay = lay
        flat = out.view(lay.n * t, k * k)
        return lay.pixels(flat).permute(0, 3, 1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        a, x2buf = ctx.saved_tensors
        lay: _Layout = ctx.lay
        t, r, c = lay.t, lay.r, a.shape[1]
        k, span = 2 * r + 1, t + 2 * r
        g = lay.scatter(grad).view(lay.n, t, k, k)  # zero at padding: those costs were never outputs
        runs = a.view(lay.n, t, c)
        ga = torch.zeros_like(runs) if ctx.needs_input_grad[0] else None
        gx2 = torch.zeros_like(x2buf) if ctx.needs_input_grad[1] else None
        gband = a.new_zeros(lay.n, t, span)
        for i in range(k):
            _band(gband, k).copy_(g[:, :, i])  # d pairs: zero off the band
            win = _windows(x2buf, lay, i, c)
            if ga is not None:
                ga.baddbmm_(gband, win, alpha=1.0 / c)
            if gx2 is not None:
                gwin = torch.bmm(gband.transpose(1, 2), runs).mul_(1.0 / c)  # (n, T+2r, C)
                # Windows of neighbouring runs overlap: add the first T rows and the 2r that spill into
                # the next run's window as two non-overlapping strided views.
                _windows(gx2, lay, i, c, rows=t).add_(gwin[:, :t])
                _windows(gx2, lay, i, c, rows=2 * r, skip=t).add_(gwin[:, t:])
        g1 = lay.pixels(ga.view(-1, c)).permute(0, 3, 1, 2) if ga is not None else None
        g2 = lay.pixels(gx2, front=lay.front).permute(0, 3, 1, 2) if gx2 is not None else None
        return g1, g2, None, None


def _windows(buf: torch.Tensor, lay: _Layout, i: int, c: int, rows: int | None = None, skip: int = 0):
    """Rows [skip, skip+rows) of every run's frame-2 window at dy index i, as an (n, rows, C) view."""
    rows = lay.t + 2 * lay.r if rows is None else rows
    start = buf.storage_offset() + (i * lay.row + skip) * c
    return buf.as_strided((lay.n, rows, c), (lay.t * c, c, 1), start)


def _band(pairs: torch.Tensor, k: int) -> torch.Tensor:
    """View (n, T, k) of the diagonal band of (n, T, T+k-1): pixel p of a run against window rows p..p+k-1."""
    n, t, span = pairs.shape
    return pairs.as_strided((n, t, k), (t * span, span + 1, 1), pairs.storage_offset())


def correlation(
    x1: torch.Tensor, x2: torch.Tensor, max_displacement: int = 4, tile: int = 16
) -> torch.Tensor:
    """Cost volume (B, (2r+1)^2, H, W) between feature maps x1, x2 (B, C, H, W); r = ``max_displacement``.

    Channel (dy + r) * (2r+1) + (dx + r) holds ``mean over C of x1(y, x) * x2(y + dy, x + dx)``, x2 being
    zero outside the image. ``tile`` (pixels per GEMM run) trades wasted arithmetic against GEMM size; the
    result does not depend on it. Differentiable in x1 and x2 (first order).
    """
    if x1.dim() != 4 or x1.shape != x2.shape:
        raise BadInputError(
            f"correlation: x1 and x2 must be feature maps of one shape (B, C, H, W), got "
            f"{tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    if max_displacement < 0 or tile < 1:
        raise BadInputError(
            f"correlation: max_displacement must be >= 0 and tile >= 1, got {max_displacement} and {tile}"
        )
    if x1.device != x2.device:
        raise BadInputError(f"correlation: x1 is on {x1.device}, x2 on {x2.device}")
    # Under autocast, conv features (half) meet grid_sample output (float32): compute in the wider type.
    dtype = torch.promote_types(x1.dtype, x2.dtype)
    x1, x2 = x1.to(dtype), x2.to(dtype)
    # Any strides will do: the inputs are copied into the padded layout anyway.
    return _Correlation.apply(x1, x2, max_displacement, tile)


def correlation_reference(x1: torch.Tensor, x2: torch.Tensor, r: int = 4) -> torch.Tensor:
    """The definition, one shift at a time: what `correlation` is tested and benchmarked against.

    For each (dy, dx), row-major, the channel mean of x1 * (x2 shifted, zero outside). Slow (81
    passes over memory at r=4, as many again in backward); the public reference falls back to it
    without CUDA.
    """
    _, _, h, w = x1.shape
    x2p = F.pad(x2, (r, r, r, r))
    shifts = [
        (x1 * x2p[:, :, dy : dy + h, dx : dx + w]).mean(dim=1)
        for dy in range(2 * r + 1)
        for dx in range(2 * r + 1)
    ]
    return torch.stack(shifts, dim=1)
