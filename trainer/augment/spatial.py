"""The spatial pass: a random affine map of the whole pair plus a small relative one for frame 2,
mirrors, and the pseudo-label flow carried through both maps exactly.

Geometry in pixel coordinates (x right, y down, pixel centres at integers, as flow_warp uses). An
affine T maps a point of the original frame to the transformed frame:
    T(x) = A (x - c) + c + t,   A = R(angle) diag(zoom * squeeze, zoom / squeeze),
c the frame centre and t = (tx (W-1)/2, ty (H-1)/2): translations are in the [-1, 1] normalised units
of the reference. The rotation is a true rotation in pixels, a deliberate convention difference: the
reference (RandomAffineFlow) applies [[cos, sin], [-sin, cos]] to normalised [-1, 1] coordinates (the
opposite sense, stretched by the aspect ratio on non-square frames), so at 0.01 rad on 128x416 (zoom
1.2) its maps differ from ours by up to 2.4 px at the corners (4.6 px for the same signed angle) and
its label flow by ~1.1 px mean with a relative rotation, up to a whole flow jump at motion edges,
while both flows are consistent with their own frames (warp error 0.0011 vs ours 0.0013, zero flow
0.02) and our pass driven by its maps reproduces its flow to 1e-3 px.
Frame 1 uses T1 = M G and frame 2 T2 = M R G (G global, R relative, M the mirrors), so mirrors
negate the flow through T2 like any other map.
Frames are resampled by inverse mapping (bilinear), full_seg and noc nearest: the reference samples
full_seg bilinearly and casts to long, which invents labels (label - 1) on ~9-18 % of pixels at region
borders; that is a bug there, not followed here. The new flow at p is
T2(x1 + flow(x1)) - p with x1 = T1^-1(p), flow sampled bilinearly at x1.

A draw is kept only if the output frame maps inside the source frame (its four corners); ARFlow
redraws until that holds: here `tries` candidates are drawn at once per sample (no host sync) and the
first valid one is taken, the identity if none is (never the case for zoom ranges starting at 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.augment.configs import SpatialConfig
from unsamflow.trainer.augment.types import AugmentedPair, coin, noise_field, uniform

TRIES = 16
_TOL = 1e-3  # px: corners this close to the border count as inside


@dataclass
class AffineParams:
    """Per-sample (B,) zoom, squeeze, angle (rad), tx, ty (fractions of the half-size)."""

    zoom: torch.Tensor
    squeeze: torch.Tensor
    angle: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor

    @classmethod
    def identity(cls, batch: int, device: torch.device | str = "cpu") -> AffineParams:
        one, zero = torch.ones(batch, device=device), torch.zeros(batch, device=device)
        return cls(one, one.clone(), zero, zero.clone(), zero.clone())

    def to(self, device: torch.device | str) -> AffineParams:
        return AffineParams(*(t.to(device) for t in (self.zoom, self.squeeze, self.angle, self.tx, self.ty)))


@dataclass
class SpatialParams:
    """One draw of the spatial pass: global and relative affine, mirrors (B,) bool, noise."""

    glob: AffineParams
    rel: AffineParams
    hflip: torch.Tensor
    vflip: torch.Tensor
    noise: torch.Tensor | None = None  # (B, 2, 3, H, W) added to the transformed frames

    @classmethod
    def identity(cls, batch: int, device: torch.device | str = "cpu") -> SpatialParams:
        off = torch.zeros(batch, dtype=torch.bool, device=device)
        return cls(
            AffineParams.identity(batch, device), AffineParams.identity(batch, device), off, off.clone()
        )


def affine_matrices(p: AffineParams, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, T^-1) as (B,3,3) float32 pixel-coordinate matrices for frames of size (H, W)."""
    h, w = size
    cx, cy = (w - 1) / 2, (h - 1) / 2
    sx, sy = (p.zoom * p.squeeze).float(), (p.zoom / p.squeeze).float()
    cos, sin = torch.cos(p.angle.float()), torch.sin(p.angle.float())
    tx, ty = p.tx.float() * cx, p.ty.float() * cy
    zero, one = torch.zeros_like(sx), torch.ones_like(sx)
    a, bb, c, d = cos * sx, -sin * sy, sin * sx, cos * sy
    fwd = _rows(a, bb, cx + tx - a * cx - bb * cy, c, d, cy + ty - c * cx - d * cy, zero, zero, one)
    # A^-1 = diag(1/sx, 1/sy) R(-angle); x = A^-1 (p - c - t) + c
    ia, ib, ic, id_ = cos / sx, sin / sx, -sin / sy, cos / sy
    px, py = cx + tx, cy + ty
    inv = _rows(ia, ib, cx - ia * px - ib * py, ic, id_, cy - ic * px - id_ * py, zero, zero, one)
    return fwd, inv


def _rows(*entries: torch.Tensor) -> torch.Tensor:
    """(B,3,3) from nine (B,) entries in row-major order (one stack, not nine index writes)."""
    return torch.stack(entries, 1).view(-1, 3, 3)


def mirror_matrix(hflip: torch.Tensor, vflip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,3,3) x -> W-1-x where hflip, y -> H-1-y where vflip (its own inverse)."""
    h, w = size
    sx, sy = 1 - 2 * hflip.float(), 1 - 2 * vflip.float()
    zero, one = torch.zeros_like(sx), torch.ones_like(sx)
    m = _rows(sx, zero, (1 - sx) * (w - 1) / 2, zero, sy, (1 - sy) * (h - 1) / 2, zero, zero, one)
    return m


def frame_maps(params: SpatialParams, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(T1, T1^-1, T2, T2^-1): the full maps of frame 1 and frame 2, mirrors included."""
    g, g_inv = affine_matrices(params.glob, size)
    r, r_inv = affine_matrices(params.rel, size)
    m = mirror_matrix(params.hflip, params.vflip, size).to(g.device)
    return m @ g, g_inv @ m, m @ r @ g, g_inv @ r_inv @ m


def inside(inv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(...,) bool: the output frame's corners map (by inv, (...,3,3)) inside the source frame."""
    h, w = size
    corners = torch.tensor(
        [[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], dtype=inv.dtype, device=inv.device
    )
    q = inv @ corners
    ok = (q[..., 0, :] >= -_TOL) & (q[..., 0, :] <= w - 1 + _TOL) & (q[..., 1, :] >= -_TOL)
    return (ok & (q[..., 1, :] <= h - 1 + _TOL)).all(-1)


def _draw_affine(
    generator: torch.Generator, n: int, zoom: tuple, squeeze: tuple, rotate: tuple, translate: float
) -> AffineParams:
    dev = generator.device
    return AffineParams(
        zoom=uniform(generator, n, zoom[0], zoom[1], dev),
        squeeze=uniform(generator, n, squeeze[0], squeeze[1], dev),
        angle=uniform(generator, n, rotate[0], rotate[1], dev),
        tx=uniform(generator, n, -translate / 2, translate / 2, dev),
        ty=uniform(generator, n, -translate / 2, translate / 2, dev),
    )


def _first_valid(cand: AffineParams, valid: torch.Tensor, batch: int) -> AffineParams:
    """cand fields (tries*B,), valid (tries, B): each sample's first valid candidate, else identity."""
    tries = valid.shape[0]
    first = valid.int().argmax(0)  # argmax returns the first maximum
    ok = valid.any(0)
    ident = AffineParams.identity(batch, valid.device)
    out = []
    for c, i in zip(
        (cand.zoom, cand.squeeze, cand.angle, cand.tx, cand.ty),
        (ident.zoom, ident.squeeze, ident.angle, ident.tx, ident.ty),
        strict=True,
    ):
        pick = c.view(tries, batch).gather(0, first.view(1, batch)).squeeze(0)
        out.append(torch.where(ok, pick, i))
    return AffineParams(*out)


def draw_spatial_params(
    generator: torch.Generator,
    batch: int,
    size: tuple[int, int],
    cfg: SpatialConfig,
    device: torch.device | str = "cpu",
    tries: int = TRIES,
) -> SpatialParams:
    """Draw global and relative transforms that keep both frames inside the image, mirrors and noise.

    A fixed number of random numbers is consumed whatever is accepted, so a seed replays exactly.
    """
    z, s, r, t = cfg.zoom, cfg.squeeze, cfg.rotate, cfg.translate
    cand = _draw_affine(generator, tries * batch, z[:2], s[:2], r[:2], t[0])
    _, inv = affine_matrices(cand, size)
    glob = _first_valid(cand, inside(inv, size).view(tries, batch), batch)
    cand = _draw_affine(generator, tries * batch, z[2:], s[2:], r[2:], t[1])
    _, r_inv = affine_matrices(cand, size)
    _, g_inv = affine_matrices(glob, size)
    t2_inv = g_inv.repeat(tries, 1, 1) @ r_inv  # sample-major within each try, like cand
    rel = _first_valid(cand, inside(t2_inv, size).view(tries, batch), batch)
    dev = generator.device
    hflip = coin(generator, batch, dev) & cfg.hflip
    vflip = coin(generator, batch, dev) & cfg.vflip
    params = SpatialParams(glob.to(device), rel.to(device), hflip.to(device), vflip.to(device))
    if cfg.noise > 0:
        params.noise = noise_field(generator, (batch, 2, 3, *size), cfg.noise, device)
    return params


def _grid(inv: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grid of an inverse map: normalised (B,H,W,2) for grid_sample and pixels (B,2,H,W)."""
    h, w = size
    hx, hy = max(w - 1, 1) / 2, max(h - 1, 1) / 2
    norm = torch.tensor([[1 / hx, 0, -1], [0, 1 / hy, -1], [0, 0, 1]], device=inv.device)
    denorm = torch.tensor([[hx, 0, hx], [0, hy, hy], [0, 0, 1]], device=inv.device)
    theta = (norm @ inv @ denorm)[:, :2]
    grid = F.affine_grid(theta, [inv.shape[0], 1, h, w], align_corners=True)
    px = torch.stack(((grid[..., 0] + 1) * (w - 1) / 2, (grid[..., 1] + 1) * (h - 1) / 2), 1)
    return grid, px


def _nearest_index(px: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W) flat index of the nearest source pixel of px (B,2,H,W): labels are gathered exactly."""
    h, w = size
    ix = px[:, 0].round().clamp(0, w - 1).long()
    iy = px[:, 1].round().clamp(0, h - 1).long()
    return (iy * w + ix).flatten(1)


def apply_spatial(
    img1: torch.Tensor,
    img2: torch.Tensor,
    flow: torch.Tensor,
    noc: torch.Tensor,
    seg1: torch.Tensor,
    seg2: torch.Tensor,
    params: SpatialParams,
) -> AugmentedPair:
    """Transform a pair, its pseudo-label flow (B,2,H,W), noc and full_seg by one draw."""
    pair = AugmentedPair.build(img1, img2, flow, noc, seg1, seg2)
    b, _, h, w = pair.img1.shape
    t1, t1_inv, t2, t2_inv = (t.to(pair.img1.device) for t in frame_maps(params, (h, w)))
    grid1, x1 = _grid(t1_inv, (h, w))
    grid2, x2 = _grid(t2_inv, (h, w))
    dt = pair.img1.dtype

    def sample(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, g.to(dt), mode="bilinear", padding_mode="border", align_corners=True)

    both = sample(torch.cat((pair.img1, pair.flow), 1), grid1)  # frame 1 and flow share the grid
    out1, f1, out2 = both[:, :3], both[:, 3:], sample(pair.img2, grid2)
    # T2(x1 + f(x1)) - p = A2 f(x1) + (T2 T1^-1 - I) p: the map's part is affine in p.
    rest = t2 @ t1_inv - torch.eye(3, device=t2.device)
    p = torch.stack(
        torch.meshgrid(
            torch.arange(w, device=out1.device), torch.arange(h, device=out1.device), indexing="xy"
        )
    ).to(torch.float32)
    new_flow = torch.einsum("bij,bjhw->bihw", t2[:, :2, :2].to(dt), f1) + (
        torch.einsum("bij,jhw->bihw", rest[:, :2, :2], p) + rest[:, :2, 2, None, None]
    ).to(dt)
    idx1 = _nearest_index(x1, (h, w))
    noc1 = pair.noc.flatten(1).gather(1, idx1).view(b, 1, h, w)
    s1 = pair.seg1.flatten(1).gather(1, idx1).view(b, h, w)
    s2 = pair.seg2.flatten(1).gather(1, _nearest_index(x2, (h, w))).view(b, h, w)
    if params.noise is not None:
        noise = params.noise.to(out1.device, dt)
        out1, out2 = (out1 + noise[:, 0]).clamp_(0, 1), (out2 + noise[:, 1]).clamp_(0, 1)
    return AugmentedPair(out1, out2, new_flow, noc1, s1, s2)


def spatial_pass(
    img1: torch.Tensor,
    img2: torch.Tensor,
    flow: torch.Tensor,
    noc: torch.Tensor,
    seg1: torch.Tensor,
    seg2: torch.Tensor,
    cfg: SpatialConfig,
    generator: torch.Generator,
) -> AugmentedPair:
    """Draw and apply: the pair and its pseudo-label for the spatial forward-only pass."""
    if img1.dim() != 4:
        raise BadInputError(f"spatial_pass: img1 must be (B,3,H,W), got {tuple(img1.shape)}")
    b, _, h, w = img1.shape
    return apply_spatial(
        img1, img2, flow, noc, seg1, seg2, draw_spatial_params(generator, b, (h, w), cfg, img1.device)
    )
