"""Many small homographies at once: batched, Hartley-normalised DLT inside a batched RANSAC, in torch.

Points come flat, each with a group id (a region of one image; id G = in no group). One call fits
all G homographies with a fixed number of hypotheses per group: no Python loop over regions and
no host-device copy, so the whole fit stays on the points' device.

Hypotheses: 4-point DLTs in Hartley-normalised coordinates, solved as 8x8 LU systems (h33 = 1).
Refit: per-group moment sums (24 products per point, index-added) assemble A^T A of the normalised
DLT over all inliers exactly; eigh in float64 gives its null vector and flags degenerate groups
(second-smallest eigenvalue ~ 0: collinear or coincident points).
On CUDA nothing here copies to the host; torch.linalg.eigh may synchronise once per call to check
its convergence (one call per refit, for all groups at once; not measured: no GPU was available).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from unsamflow.pipeline.errors import BadInputError

_EPS = 1e-12
# Second-smallest / largest eigenvalue of A^T A below this: the points do not pin down one
# homography (collinear, coincident, fewer than 4 distinct): the fit is marked degenerate.
_DEGENERATE_RATIO = 1e-9


@dataclass
class HomographyFit:
    """Result of fit_homographies for G groups of points.

    H maps source pixels to destination pixels (float64, scaled to unit Frobenius norm). `ok` is
    False where the fit is unusable (fewer than 4 visible points, points that do not determine a
    homography, non-finite); H is the identity there. `projected` is H(src) of every point under
    its group's H (src itself for points in no group or in a group that is not ok).
    """

    H: torch.Tensor  # (G, 3, 3) float64
    ok: torch.Tensor  # (G,) bool
    num_visible: torch.Tensor  # (G,) int64
    num_inliers: torch.Tensor  # (G,) int64
    inlier_rate: torch.Tensor  # (G,) float64, 0 where the fit is not ok
    projected: torch.Tensor  # (P, 2) float64


def project(H: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply homographies H (..., 3, 3) to points (..., n, 2); near-zero denominators are clamped."""
    x, y = pts[..., 0], pts[..., 1]
    h = H.unsqueeze(-3)  # (..., 1, 3, 3): broadcast over points
    den = _clamp_den(h[..., 2, 0] * x + h[..., 2, 1] * y + h[..., 2, 2])
    u = (h[..., 0, 0] * x + h[..., 0, 1] * y + h[..., 0, 2]) / den
    v = (h[..., 1, 0] * x + h[..., 1, 1] * y + h[..., 1, 2]) / den
    return torch.stack((u, v), dim=-1)


def fit_homographies(
    src: torch.Tensor,
    dst: torch.Tensor,
    group: torch.Tensor,
    visible: torch.Tensor,
    num_groups: int,
    *,
    thresh: float,
    num_hypotheses: int = 128,
    num_score_points: int = 256,
    refits: int = 1,
    generator: torch.Generator | None = None,
) -> HomographyFit:
    """RANSAC-fit one homography per group to its visible correspondences src -> dst, all at once.

    src, dst: (P, 2) pixel coordinates; group: (P,) int64 in [0, num_groups] (num_groups = in no
    group); visible: (P,) bool, the points the fit may use. thresh: inlier reprojection distance
    in pixels (|H(src) - dst| <= thresh, as OpenCV's RANSAC). Each group draws num_hypotheses
    minimal 4-point samples, scores them on num_score_points random visible points of the group,
    keeps the best, then re-fits by least squares on all its inliers `refits` times (as OpenCV, which
    then also runs Levenberg-Marquardt on the reprojection error: tried here, it moved no loss value by
    more than 1e-6, so it is left out; benchmarks/bench_homography_parity.py compares the loss with the
    reference's cv2.findHomography loop on realistic flows). Runs without
    gradient (the result is a constant for any loss built on it) and without host-device copies.
    A generator, if given, must live on the points' device.
    """
    p = src.shape[0]
    if src.shape != (p, 2) or dst.shape != (p, 2) or group.shape != (p,) or visible.shape != (p,):
        raise BadInputError(
            f"fit_homographies: src {tuple(src.shape)} and dst {tuple(dst.shape)} must be (P, 2), group "
            f"{tuple(group.shape)} and visible {tuple(visible.shape)} (P,)"
        )
    if not thresh > 0 or num_hypotheses < 1 or num_score_points < 1 or refits < 1:
        raise BadInputError(
            f"fit_homographies: need thresh > 0 and at least 1 hypothesis, scoring point and refit; got "
            f"{thresh}, {num_hypotheses}, {num_score_points}, {refits}"
        )
    with torch.no_grad():
        return _fit(src, dst, group, visible, num_groups, thresh, num_hypotheses, num_score_points,
                    refits, generator)


def _fit(src, dst, group, visible, g, thresh, k, m, refits, generator) -> HomographyFit:
    dev = src.device
    f64 = torch.float64
    p = src.shape[0]
    if p == 0:  # nothing to fit (e.g. no region selected): every group is unusable
        zeros = torch.zeros(g, dtype=torch.int64, device=dev)
        return HomographyFit(H=torch.eye(3, dtype=f64, device=dev).repeat(g, 1, 1), ok=zeros.bool(),
                             num_visible=zeros, num_inliers=zeros, inlier_rate=zeros.to(f64),
                             projected=torch.zeros(0, 2, dtype=f64, device=dev))
    # x and y as separate vectors: interleaved (P, 2) temporaries and reductions are slow on CPU
    sx, sy = src[:, 0].to(f64), src[:, 1].to(f64)
    dx, dy = dst[:, 0].to(f64), dst[:, 1].to(f64)
    group = group.to(torch.int64)
    visible = visible & (group < g)
    vis = visible.to(f64)
    thr2 = thresh * thresh

    # Hartley normalisation per group, from its visible points: centroid to 0, mean distance sqrt(2).
    first = _group_sums([vis, sx * vis, sy * vis, dx * vis, dy * vis], group, g)
    count = first[:, 0]
    mean = first[:, 1:] / count.clamp(min=1)[:, None]  # (G, 4): src xy, dst xy
    cx, cy, cu, cv = _per_point(mean, group)
    nsx, nsy, ndx, ndy = sx - cx, sy - cy, dx - cu, dy - cv
    spread = _group_sums(
        [torch.sqrt(nsx * nsx + nsy * nsy) * vis, torch.sqrt(ndx * ndx + ndy * ndy) * vis], group, g
    ) / count.clamp(min=1)[:, None]  # (G, 2)
    scale = torch.where(spread > _EPS, 2.0**0.5 / spread.clamp(min=_EPS), torch.ones_like(spread))
    T_src = _similarity(scale[:, 0], mean[:, 0], mean[:, 1])
    T_dst = _similarity(scale[:, 1], mean[:, 2], mean[:, 3])
    ss, sd = _per_point(scale, group)
    npts = (nsx * ss, nsy * ss, ndx * sd, ndy * sd)

    # Random visible points per group without a loop: sort points by (group, visible first);
    # group j's visible points are then the contiguous run [start_j, start_j + count_j).
    order = torch.argsort(group * 2 + (~visible).to(torch.int64))
    total = torch.zeros(g + 1, dtype=torch.int64, device=dev).index_add_(0, group, torch.ones_like(group))
    start = (torch.cumsum(total, 0) - total)[:g]
    nvis = count.round().to(torch.int64)
    r = torch.rand(g, 4 * k + m, generator=generator, device=dev, dtype=f64)
    offset = torch.minimum((r * nvis[:, None]).floor().to(torch.int64), (nvis - 1).clamp(min=0)[:, None])
    idx = order.index_select(0, (start[:, None] + offset).clamp(max=max(p - 1, 0)).reshape(-1))
    idx = idx.reshape(g, 4 * k + m)

    # Hypotheses from minimal samples, in normalised coordinates.
    samp = [t.index_select(0, idx[:, : 4 * k].reshape(-1)).reshape(g, k, 4) for t in npts]
    Hn = _minimal_solve(*samp)  # (G, K, 3, 3)
    Hk = _denormalise(Hn, T_src[:, None], T_dst[:, None])

    # Score every hypothesis on the same random visible points of its group; keep the best.
    # (float32 is ample for a pass/fail test at >= 0.1 px on image coordinates, and halves the traffic)
    ev = idx[:, 4 * k :].reshape(-1)
    f32 = torch.float32
    hom = torch.stack((sx[ev], sy[ev], torch.ones_like(sx[ev])), -1).reshape(g, m, 3).to(f32)
    proj = torch.einsum("gmj,gkij->gkmi", hom, Hk.to(f32))  # one batched matmul for all hypotheses
    # |p/den - e|^2 <= thr^2 without dividing: |p - e den|^2 <= thr^2 den^2
    den = proj[..., 2]
    ex, ey = dx[ev].reshape(g, 1, m).to(f32), dy[ev].reshape(g, 1, m).to(f32)
    inlier = (proj[..., 0] - ex * den).square() + (proj[..., 1] - ey * den).square() <= thr2 * den.square()
    best = inlier.sum(-1).argmax(-1)  # (G,)
    H = Hk.gather(1, best[:, None, None, None].expand(-1, 1, 3, 3)).squeeze(1)

    # Least-squares refits on all inliers of the current model (as OpenCV refines on its inliers).
    # A group whose inliers do not determine one homography (collinear, coincident, < 4 distinct
    # points) is degenerate: unusable.
    degenerate = torch.ones(g, dtype=torch.bool, device=dev)
    for _ in range(refits):
        u, v = _project_grouped(H, sx, sy, group)
        w = (visible & ((u - dx).square() + (v - dy).square() <= thr2)).to(f64)
        Hn, degenerate = _solve(_ata(_weighted_moments(npts, w, group, g)))
        H = torch.where(degenerate[:, None, None], H, _denormalise(Hn, T_src, T_dst))

    finite = torch.isfinite(H).all(-1).all(-1)
    ok = (nvis >= 4) & ~degenerate & finite
    H = torch.where(ok[:, None, None], H, torch.eye(3, dtype=f64, device=dev).expand_as(H))
    H = H / H.flatten(-2).norm(dim=-1).clamp(min=_EPS)[:, None, None]
    u, v = _project_grouped(H, sx, sy, group)
    inl = (visible & ((u - dx).square() + (v - dy).square() <= thr2)).to(f64)
    ninl = _group_sums([inl], group, g)[:, 0].round().to(torch.int64) * ok
    rate = ninl.to(f64) / nvis.clamp(min=1).to(f64)
    return HomographyFit(H=H, ok=ok, num_visible=nvis, num_inliers=ninl, inlier_rate=rate,
                         projected=torch.stack((u, v), -1))


def _clamp_den(den: torch.Tensor) -> torch.Tensor:
    """Keep projective denominators away from 0 (points mapped to infinity stay finite)."""
    tiny = torch.where(den < 0, -_EPS, _EPS).to(den.dtype)
    return torch.where(den.abs() < _EPS, tiny, den)


def _project_grouped(H: torch.Tensor, x: torch.Tensor, y: torch.Tensor, group: torch.Tensor):
    """Project points x, y (P,) by the H (G, 3, 3) of their group; group G (none) gets the identity."""
    eye = torch.eye(3, dtype=H.dtype, device=H.device)[None]
    coef = torch.cat((H, eye), dim=0).reshape(-1, 9).t().contiguous()  # (9, G + 1)
    c = [row.index_select(0, group) for row in coef]
    den = _clamp_den(c[6] * x + c[7] * y + c[8])
    return (c[0] * x + c[1] * y + c[2]) / den, (c[3] * x + c[4] * y + c[5]) / den


def _per_point(v: torch.Tensor, group: torch.Tensor) -> list[torch.Tensor]:
    """Per-group values v (G, C) to C per-point vectors; group G (none) gets zeros."""
    pad = torch.cat((v, torch.zeros_like(v[:1])), 0).t()
    return [row.index_select(0, group) for row in pad]


def _group_sums(vals: list[torch.Tensor], group: torch.Tensor, g: int) -> torch.Tensor:
    """Sum each per-point vector into groups: (G, len(vals)); the no-group bucket is dropped.

    1-D index_add_ per vector: no interleaved temporaries, and (unlike bincount) no host sync on GPU.
    """
    out = torch.zeros(len(vals), g + 1, dtype=vals[0].dtype, device=vals[0].device)
    for row, v in zip(out, vals, strict=True):
        row.index_add_(0, group, v)
    return out[:, :g].t()


def _weighted_moments(npts, w: torch.Tensor, group: torch.Tensor, g: int) -> torch.Tensor:
    """Per-group sums of _monomials over the points with w = 1 (w is a 0/1 mask): (G, 24).

    On CPU the other points are dropped first (a host-side index there; on GPU it would cost a sync,
    so all points go through, multiplied by w).
    """
    if w.device.type == "cpu":
        nz = torch.nonzero(w).squeeze(1)
        npts = [t.index_select(0, nz) for t in npts]
        return _group_sums(_monomials(*npts), group.index_select(0, nz), g)
    return _group_sums([t * w for t in _monomials(*npts)], group, g)


def _monomials(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
    """The 24 per-point products from which A^T A of the DLT of (x, y) -> (u, v) is assembled.

    With a = (x, y, 1) and the DLT rows [-a, 0, u a], [0, -a, v a], A^T A is made of a a^T
    weighted by 1, u, v and u^2 + v^2; a a^T has 6 distinct entries.
    """
    aa = [x * x, x * y, x, y * y, y, None]
    out = []
    for wt in (None, u, v, u * u + v * v):
        for a in aa:
            if a is None:
                out.append(torch.ones_like(x) if wt is None else wt)
            else:
                out.append(a if wt is None else wt * a)
    return out


def _ata(mom: torch.Tensor) -> torch.Tensor:
    """(..., 24) moments -> (..., 9, 9) A^T A."""
    sym = torch.tensor([[0, 1, 2], [1, 3, 4], [2, 4, 5]], device=mom.device)
    m = mom.reshape(*mom.shape[:-1], 4, 6)[..., sym]  # (..., 4, 3, 3)
    s0, su, sv, sq = m.unbind(-3)
    z = torch.zeros_like(s0)
    rows = [
        torch.cat((s0, z, -su), -1),
        torch.cat((z, s0, -sv), -1),
        torch.cat((-su, -sv, sq), -1),
    ]
    return torch.cat(rows, -2)


def _minimal_solve(x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Homographies through 4 correspondences each ((..., 4) normalised coordinates), h33 fixed to 1.

    An 8x8 LU solve per sample is several times cheaper than an eigh, and solve_ex never syncs with
    the host; degenerate samples give non-finite or wild H, which then simply score no inliers.
    """
    z, o = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack((x, y, o, z, z, z, -u * x, -u * y), -1)
    rows_v = torch.stack((z, z, z, x, y, o, -v * x, -v * y), -1)
    a = torch.cat((rows_u, rows_v), -2)  # (..., 8, 8)
    rhs = torch.cat((u, v), -1)[..., None]
    h, _ = torch.linalg.solve_ex(a, rhs)
    return torch.cat((h[..., 0], torch.ones_like(h[..., :1, 0])), -1).reshape(*x.shape[:-1], 3, 3)


def _solve(ata: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Null vector of A^T A as a 3x3 matrix, and whether it is not unique (degenerate points)."""
    ata = torch.nan_to_num(ata, nan=0.0, posinf=0.0, neginf=0.0)
    evals, evecs = torch.linalg.eigh(ata)
    h = evecs[..., :, 0]
    degenerate = evals[..., 1] <= _DEGENERATE_RATIO * evals[..., -1].clamp(min=_EPS)
    return h.reshape(*h.shape[:-1], 3, 3), degenerate


def _similarity(scale: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Normalising transforms (..., 3, 3): p -> scale * (p - c)."""
    t = torch.zeros(*scale.shape, 3, 3, dtype=scale.dtype, device=scale.device)
    t[..., 0, 0] = scale
    t[..., 1, 1] = scale
    t[..., 0, 2] = -scale * cx
    t[..., 1, 2] = -scale * cy
    t[..., 2, 2] = 1.0
    return t


def _denormalise(Hn: torch.Tensor, T_src: torch.Tensor, T_dst: torch.Tensor) -> torch.Tensor:
    """H = T_dst^-1 Hn T_src (T_dst is a similarity, inverted in closed form)."""
    s = T_dst[..., 0, 0]
    inv = torch.zeros_like(T_dst)
    inv[..., 0, 0] = 1.0 / s
    inv[..., 1, 1] = 1.0 / s
    inv[..., 0, 2] = -T_dst[..., 0, 2] / s
    inv[..., 1, 2] = -T_dst[..., 1, 2] / s
    inv[..., 2, 2] = 1.0
    return inv @ Hn @ T_src
