"""Optical-flow evaluation metrics with ptlflow's names, aggregated the way the benchmarks do.

Names (per valid pixel):
  epe        mean end-point error |pred - gt|_2 in px
  epe_non_occ  epe over non-occluded pixels   } only when occlusions are given (Sintel, synthetic,
  epe_occ      epe over occluded pixels       } KITTI with both flow_occ and flow_noc)
  px1/3/5    fraction of pixels with end-point error < 1 / 3 / 5 px (accuracies, in [0, 1])
  flall      KITTI Fl-all, in percent: pixels with error > 3 px AND > 5 % of |gt|

Aggregation: a plain name is always pooled over every valid pixel of every image (Sintel's rule, and
the KITTI devkit's for Fl-all). "image" aggregation (KITTI) adds each metric averaged over images as
`<name>_per_image` (ARFlow's and RAFT's KITTI EPE is `epe_per_image`). `FlowMetrics.for_dataset(name)`
picks the benchmark's rule from a dataset name such as "kitti-2015-training".

Inputs: torch tensors are channel-first (B, 2, H, W) or (2, H, W); numpy arrays are (H, W, 2), as
pipeline.flow.datasets yields them. Masks are (B, H, W) / (H, W), bool or 0/1.
"""

from __future__ import annotations

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError

AGGREGATIONS = ("pixel", "image")
_THRESHOLDS = {"px1": 1.0, "px3": 3.0, "px5": 5.0}


def _as_flow(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """-> float tensor (B, 2, H, W)."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (3, 4) or x.shape[-1] != 2:
            raise BadInputError(f"numpy flow must be (H, W, 2) or (B, H, W, 2), got {x.shape}")
        x = torch.from_numpy(np.ascontiguousarray(x)).movedim(-1, -3)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 2:
        raise BadInputError(f"flow tensor must be (B, 2, H, W) or (2, H, W), got {tuple(x.shape)}")
    return x.float()


def _as_mask(m: torch.Tensor | np.ndarray | None, like: torch.Tensor, name: str) -> torch.Tensor | None:
    if m is None:
        return None
    m = torch.as_tensor(np.asarray(m) if isinstance(m, np.ndarray) else m, device=like.device)
    if m.ndim == 2:
        m = m.unsqueeze(0)
    want = (like.shape[0],) + tuple(like.shape[2:])
    if tuple(m.shape) != want:
        raise BadInputError(f"{name} mask has shape {tuple(m.shape)}, expected {want}")
    return m.bool()


def epe_map(pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-pixel end-point error (B, H, W)."""
    p, g = _as_flow(pred), _as_flow(gt)
    if p.shape != g.shape:
        raise BadInputError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return torch.linalg.vector_norm(p - g.to(p.device), dim=1)


def image_sums(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None = None,
    occ: torch.Tensor | np.ndarray | None = None,
) -> list[dict[str, float]]:
    """For each image of the batch: error sums and pixel counts ("<metric>" sum, "n_<metric>" count)."""
    err = epe_map(pred, gt)
    g = _as_flow(gt).to(err.device)
    mag = torch.linalg.vector_norm(g, dim=1)
    v = _as_mask(valid, g, "valid")
    if v is None:
        v = torch.ones_like(err, dtype=torch.bool)
    v = v & torch.isfinite(err)
    o = _as_mask(occ, g, "occlusion")
    out = []
    for b in range(err.shape[0]):
        e, vb = err[b][v[b]], v[b]
        s = {"epe": e.sum().item(), "n_epe": float(e.numel())}
        for name, t in _THRESHOLDS.items():
            s[name], s[f"n_{name}"] = (e < t).sum().item(), float(e.numel())
        outlier = (e > 3.0) & (e > 0.05 * mag[b][vb])
        s["flall"], s["n_flall"] = 100.0 * outlier.sum().item(), float(e.numel())
        if o is not None:
            for name, sel in (("epe_non_occ", vb & ~o[b]), ("epe_occ", vb & o[b])):
                es = err[b][sel]
                s[name], s[f"n_{name}"] = es.sum().item(), float(es.numel())
        out.append(s)
    return out


class FlowMetrics:
    """Accumulates metrics over a dataset; `update` per batch, `compute` at the end.

    The state is a dict of sums, so accumulators of several processes merge by adding (`merge`, or an
    all-reduce of `sums` over the keys every process has).
    """

    def __init__(self, aggregate: str = "pixel"):
        if aggregate not in AGGREGATIONS:
            raise BadInputError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        self.aggregate = aggregate
        self.sums: dict[str, float] = {}

    @classmethod
    def for_dataset(cls, name: str) -> FlowMetrics:
        """KITTI benchmarks also report per-image averages; the others only pool all pixels."""
        return cls("image" if name.lower().startswith("kitti") else "pixel")

    def reset(self) -> None:
        self.sums = {}

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        gt: torch.Tensor | np.ndarray,
        valid: torch.Tensor | np.ndarray | None = None,
        occ: torch.Tensor | np.ndarray | None = None,
    ) -> list[dict[str, float]]:
        """Add a batch; returns each image's own metrics (handy for per-image reports)."""
        per_image = []
        for s in image_sums(pred, gt, valid, occ):
            means = _means(s)
            per_image.append(means)
            for k, val in s.items():
                self.sums[k] = self.sums.get(k, 0.0) + val
            if self.aggregate == "image":
                for k, val in means.items():
                    self.sums[f"{k}_per_image"] = self.sums.get(f"{k}_per_image", 0.0) + val
                    self.sums[f"n_{k}_per_image"] = self.sums.get(f"n_{k}_per_image", 0.0) + 1.0
        return per_image

    def merge(self, other: FlowMetrics) -> FlowMetrics:
        if other.aggregate != self.aggregate:
            raise BadInputError(f"cannot merge {other.aggregate!r} metrics into {self.aggregate!r} metrics")
        for k, val in other.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + val
        return self

    def compute(self) -> dict[str, float]:
        """Metric name -> value; a metric with no pixels at all (e.g. epe_occ) is left out."""
        return _means(self.sums)


def _means(sums: dict[str, float]) -> dict[str, float]:
    return {k: sums[k] / sums[f"n_{k}"] for k in sums if not k.startswith("n_") and sums[f"n_{k}"] > 0}


def flow_metrics(
    pred: torch.Tensor | np.ndarray,
    gt: torch.Tensor | np.ndarray,
    valid: torch.Tensor | np.ndarray | None = None,
    occ: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of one image (or a batch pooled over all its pixels)."""
    m = FlowMetrics("pixel")
    m.update(pred, gt, valid, occ)
    return m.compute()
