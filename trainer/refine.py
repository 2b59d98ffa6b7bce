"""Object-level post-processing of a flow field: each confidently fitted region becomes a homography flow.

The same per-region RANSAC homography as the homography smoothness loss (method.md section 3),
used after the fact: a region whose visible flow a homography explains (inlier rate high
enough) gets the homography's flow on its pixels, occluded ones included.

Named rules (RULES) bundle the options. The commands default to DEFAULT_RULE, "one-motion": every region,
1 px, but only where one homography explains nearly all of the region (inlier rate >= 0.9; a mask that
spans two motions, such as a limb and the body or an object and its background, leaves far more than 10 %
outliers), where at least half the region is visible (no extrapolation from a few pixels), and only the
pixels that disagree with the fit are replaced (where the input flow already agrees within the
threshold it is at least as good as a planar approximation of a surface that may not be planar). On the
project's 14 real pairs (benchmarks/results/refine_real.md) it is the one rule tried that helped at least
12; the loss's own rule ("loss") helped 7 and hurt 6, the earlier default ("any") hurt 9.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.homography_fit import fit_homographies
from unsamflow.trainer.warp import mesh_grid

# Groups fitted per call: bounds the (groups x hypotheses) temporaries to ~100 MB.
_GROUPS_PER_FIT = 256
_REGIONS = re.compile(r"^(all|largest-(\d+)|occluded-(\d+))$")

# Named option sets. "loss": the homography loss's selection (the paper's; its threshold is Sintel's 3 px,
# give KITTI's 0.5 px explicitly); "any": every region fitted at all (the earlier command default).
RULES: dict[str, dict[str, Any]] = {
    "one-motion": {"regions": "all", "ransac_thresh": 1.0, "min_inlier_rate": 0.9, "min_visible_frac": 0.5,
                   "keep_inliers": True},
    "loss": {"regions": "occluded-6", "ransac_thresh": 3.0, "min_inlier_rate": 0.5, "min_visible_frac": 0.2,
             "keep_inliers": False},
    "any": {"regions": "all", "ransac_thresh": 1.0, "min_inlier_rate": 0.5, "min_visible_frac": 0.2,
            "keep_inliers": False},
}  # fmt: skip
DEFAULT_RULE = "one-motion"


@dataclass
class RegionResult:
    """What happened to one region of one image."""

    image: int
    label: int  # the label as given in full_seg
    pixels: int
    visible: int
    inlier_rate: float
    refined: bool
    reason: str  # "refined", or why not
    replaced: int = 0  # pixels whose flow was replaced (fewer than `pixels` with keep_inliers)


@dataclass
class RefineReport:
    """Per-region outcome of refine_flow, in the order regions were considered."""

    regions: list[RegionResult] = field(default_factory=list)

    @property
    def num_refined(self) -> int:
        return sum(r.refined for r in self.regions)

    @property
    def refined_pixels(self) -> int:
        return sum(r.pixels for r in self.regions if r.refined)

    @property
    def replaced_pixels(self) -> int:
        return sum(r.replaced for r in self.regions)

    def to_dict(self) -> dict:
        return {
            "num_regions": len(self.regions),
            "num_refined": self.num_refined,
            "refined_pixels": self.refined_pixels,
            "replaced_pixels": self.replaced_pixels,
            "regions": [asdict(r) for r in self.regions],
        }


def refine_flow(
    flow: np.ndarray | torch.Tensor,
    full_seg: np.ndarray | torch.Tensor,
    *,
    valid: np.ndarray | torch.Tensor | None = None,
    occ: np.ndarray | torch.Tensor | None = None,
    rule: str | None = None,
    regions: str | None = None,
    ransac_thresh: float | None = None,
    min_inlier_rate: float | None = None,
    min_pixels: int = 64,
    min_visible_frac: float | None = None,
    keep_inliers: bool | None = None,
    include_background: bool = False,
    num_hypotheses: int = 128,
    seed: int = 0,
) -> tuple[np.ndarray | torch.Tensor, RefineReport]:
    """Replace the flow of each confidently fitted full_seg region by its homography's flow.

    flow: (H, W, 2) (numpy or torch) or (B, 2, H, W) torch; the result has the same layout and type.
    full_seg: integer labels, (H, W) or (B, H, W) / (B, 1, H, W); any values >= 0 (they are renumbered,
    so label count and magnitude do not matter). valid / occ: optional bool masks of the flow's size;
    the fit uses only valid, non-occluded pixels, but a refined region is replaced everywhere.
    regions: "all", "largest-N" (the N largest regions per image) or "occluded-N" (the N with the most
    occluded pixels; needs occ). Label 0 (pixels in no mask) is left alone unless include_background.
    A region is refined when it has >= min_pixels pixels, >= 4 and >= min_visible_frac of them
    usable, and an inlier rate (|H(x) - (x + flow)| <= ransac_thresh px) >= min_inlier_rate.
    keep_inliers: replace only the pixels of a refined region whose flow disagrees with the fit by more
    than ransac_thresh (the others keep theirs). rule: a name in RULES giving the defaults of the options
    left None; without a rule they default to "any" (every region, 1 px, rate 0.5, visible 0.2, replace
    all). The commands use DEFAULT_RULE. RANSAC draws come from `seed`: the same input gives the same output.
    """
    if rule is not None and rule not in RULES:
        raise BadInputError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    given = {"regions": regions, "ransac_thresh": ransac_thresh, "min_inlier_rate": min_inlier_rate,
             "min_visible_frac": min_visible_frac, "keep_inliers": keep_inliers}  # fmt: skip
    opts = {k: (v if v is not None else RULES[rule or "any"][k]) for k, v in given.items()}
    regions, ransac_thresh, min_inlier_rate = opts["regions"], opts["ransac_thresh"], opts["min_inlier_rate"]
    min_visible_frac, keep_inliers = opts["min_visible_frac"], opts["keep_inliers"]
    was_numpy = isinstance(flow, np.ndarray)
    f = torch.as_tensor(flow)
    single = f.ndim == 3
    if single:
        if f.shape[-1] != 2:
            raise BadInputError(f"flow: expected H x W x 2 or B x 2 x H x W, got shape {tuple(f.shape)}")
        f = f.permute(2, 0, 1)[None]
    elif f.ndim != 4 or f.shape[1] != 2:
        raise BadInputError(f"flow: expected H x W x 2 or B x 2 x H x W, got shape {tuple(f.shape)}")
    b, _, h, w = f.shape
    if h * w == 0 or b == 0:
        raise BadInputError(f"flow is empty (shape {tuple(f.shape)})")
    if not f.is_floating_point():
        raise BadInputError(f"flow: expected floating point values, got {f.dtype}")
    bad = int((~torch.isfinite(f)).sum())
    if bad:
        raise BadInputError(
            f"flow has {bad} NaN/Inf values; mark unknown pixels with `valid` and give them finite values"
        )
    seg = _labels(full_seg, b, h, w)
    occm = _mask(occ, "occ", b, h, w, default=False)
    usable = _mask(valid, "valid", b, h, w, default=True) & ~occm
    kind, count = _parse_regions(regions, occ is not None)
    if not ransac_thresh > 0:
        raise BadInputError(f"ransac_thresh must be > 0 px, got {ransac_thresh}")
    if not 0 <= min_inlier_rate <= 1:
        raise BadInputError(f"min_inlier_rate must be in [0, 1], got {min_inlier_rate}")
    if min_pixels < 4:
        raise BadInputError(f"min_pixels must be >= 4 (a homography needs 4 points), got {min_pixels}")

    ff = f.detach().cpu().to(torch.float64)  # a host-side tool: the per-image loop runs on the CPU
    src = mesh_grid(1, h, w, dtype=torch.float64).reshape(2, -1).t()
    out = ff.clone()
    report = RefineReport()
    gen = torch.Generator().manual_seed(seed)
    for i in range(b):
        labels, inverse, area = torch.unique(seg[i].reshape(-1), return_inverse=True, return_counts=True)
        nocc = torch.zeros(len(labels), dtype=torch.int64).index_add_(0, inverse, occm[i].reshape(-1).long())
        cand = [j for j in range(len(labels)) if include_background or labels[j] != 0]
        if kind == "largest":
            cand = sorted(cand, key=lambda j: (-int(area[j]), j))[:count]
        elif kind == "occluded":
            cand = sorted(cand, key=lambda j: (-int(nocc[j]), -int(area[j]), j))[:count]
        small = [j for j in cand if area[j] < min_pixels]
        for j in small:
            report.regions.append(RegionResult(i, int(labels[j]), int(area[j]), 0, 0.0, False,
                                               f"fewer than min_pixels={min_pixels} pixels"))
        cand = [j for j in cand if area[j] >= min_pixels]
        dst = src + ff[i].reshape(2, -1).t()
        vis = usable[i].reshape(-1)
        flat_out = out[i].reshape(2, -1)
        for c0 in range(0, len(cand), _GROUPS_PER_FIT):
            chunk = cand[c0 : c0 + _GROUPS_PER_FIT]
            g = len(chunk)
            lut = torch.full((len(labels),), g, dtype=torch.int64)
            lut[torch.tensor(chunk, dtype=torch.int64)] = torch.arange(g)
            group = lut[inverse]
            keep = torch.nonzero(group < g).squeeze(1)
            fit = fit_homographies(src[keep], dst[keep], group[keep], vis[keep], g, thresh=ransac_thresh,
                                   num_hypotheses=num_hypotheses, generator=gen)
            nvis = fit.num_visible
            ok = (
                fit.ok & (nvis >= 4) & (nvis >= min_visible_frac * area[chunk]) &
                (fit.inlier_rate >= min_inlier_rate)
            )
            take = ok[group[keep]]
            if keep_inliers:  # pixels the fit explains keep their own flow
                resid = (fit.projected - dst[keep]).square().sum(1)
                take &= resid > ransac_thresh * ransac_thresh
            idx = keep[take]
            flat_out[:, idx] = (fit.projected[take] - src[idx]).t()
            replaced = torch.zeros(g + 1, dtype=torch.int64).index_add_(
                0, group[keep], take.long())  # fmt: skip
            for s, j in enumerate(chunk):
                nv, a, rate = int(nvis[s]), int(area[j]), float(fit.inlier_rate[s])
                why = _reason(bool(ok[s]), bool(fit.ok[s]), nv, a, rate, min_visible_frac, min_inlier_rate)
                report.regions.append(RegionResult(i, int(labels[j]), a, nv, rate, bool(ok[s]), why,
                                                   int(replaced[s])))  # fmt: skip
    res = out.to(device=f.device, dtype=f.dtype)
    if single:
        res = res[0].permute(1, 2, 0).contiguous()
        return (res.numpy() if was_numpy else res), report
    return res, report


def _reason(ok: bool, fit_ok: bool, nvis: int, area: int, rate: float, frac: float, min_rate: float) -> str:
    if ok:
        return "refined"
    if nvis < 4 or nvis < frac * area:
        return f"too few usable pixels ({nvis} of {area})"
    if not fit_ok:
        return "degenerate (its pixels do not determine a homography)"
    return f"inlier rate {rate:.2f} < {min_rate}"


def _parse_regions(regions: str, have_occ: bool) -> tuple[str, int]:
    m = _REGIONS.match(str(regions))
    if not m:
        raise BadInputError(f"regions must be 'all', 'largest-N' or 'occluded-N', got {regions!r}")
    if m.group(1) == "all":
        return "all", 0
    kind = "largest" if m.group(2) is not None else "occluded"
    n = int(m.group(2) or m.group(3))
    if n < 1:
        raise BadInputError(f"regions {regions!r}: N must be >= 1")
    if kind == "occluded" and not have_occ:
        raise BadInputError(f"regions {regions!r} needs an occlusion mask (occ)")
    return kind, n


def _as_bhw(x) -> torch.Tensor:
    """An (H, W), (B, H, W) or (B, 1, H, W) array or tensor as (B, H, W); other shapes pass unchanged."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    return t[None] if t.ndim == 2 else t


def _labels(full_seg, b: int, h: int, w: int) -> torch.Tensor:
    """full_seg as (B, H, W) int64, checked: integral, non-negative, the flow's size."""
    s = _as_bhw(full_seg)
    if s.numel() == 0:
        raise BadInputError(f"full_seg is empty (shape {tuple(np.shape(full_seg))})")
    if tuple(s.shape) != (b, h, w):
        raise BadInputError(f"full_seg has shape {tuple(full_seg.shape)} but the flow is {b} x {h} x {w}")
    if s.is_floating_point():
        if not bool((s == s.round()).all()):
            raise BadInputError("full_seg must hold integer labels, got non-integral values")
    elif s.dtype == torch.bool:
        raise BadInputError("full_seg must hold integer labels, got a bool mask")
    s = s.to(torch.int64)
    if bool((s < 0).any()):
        raise BadInputError(f"full_seg has negative labels (min {int(s.min())})")
    return s


def _mask(m, name: str, b: int, h: int, w: int, default: bool) -> torch.Tensor:
    if m is None:
        return torch.full((b, h, w), default, dtype=torch.bool)
    t = _as_bhw(m)
    if tuple(t.shape) != (b, h, w):
        raise BadInputError(f"{name} mask has shape {tuple(m.shape)} but the flow is {b} x {h} x {w}")
    return t.to(torch.bool)
