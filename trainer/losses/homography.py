"""Homography smoothness (+hg, method.md section 3): flow inside occluded objects should be a homography.

For each image, the full_seg regions (label 0 excluded) with the most occluded pixels are fitted
with a homography by RANSAC on their visible correspondences (x, x + flow(x)); the L1 distance
between H(x) and x + flow(x) over all the region's pixels, divided by H*W, is the loss. All
regions of all images are fitted at once (trainer.homography_fit); the fit is a constant.
"""

from __future__ import annotations

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.homography_fit import fit_homographies
from unsamflow.trainer.warp import mesh_grid

# RANSAC reprojection thresholds (px) of the reference configurations.
RANSAC_THRESH = {"sintel": 3.0, "kitti": 0.5}


def select_regions(
    seg: torch.Tensor, occ: torch.Tensor, num_regions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The num_regions labels (> 0) per image with the most occluded pixels, in the reference's order.

    As the reference (facebookresearch/UnSAMFlow, losses/loss_blocks.py smooth_homography): the
    candidates of an image are the ids 1..max label of that image, present or not; they are ordered by
    occluded count, descending, ties by ascending id (what torch's CPU argsort(descending=True) gives
    there), and the first num_regions are taken. An id without pixels can take a slot; it is then never
    fitted (fewer than min_visible visible pixels), as in the reference.

    seg: (B, N) int64 labels in [0, N) (others are ignored, like label 0); occ: (B, N) bool.
    Returns slot (B, N) in [0, num_regions] (num_regions = not selected), valid (B, num_regions),
    area (B, num_regions) of each selected region and its label (B, num_regions; 0 where not valid).
    """
    b, n = seg.shape
    if seg.device.type == "cpu" and seg.numel():
        n = min(n, int(seg.max()) + 1)  # on CPU the label count is free to read: smaller histograms
    inrange = (seg >= 0) & (seg < n)
    lab = torch.where(inrange, seg, torch.zeros_like(seg))
    f64 = torch.float64
    # per-image label histograms as one flat 1-D index_add_ each (cheaper than a 2-D scatter_add_)
    flat = (lab + n * torch.arange(b, device=seg.device)[:, None]).reshape(-1)
    zeros = torch.zeros(b * n, dtype=f64, device=seg.device)
    area, nocc = (
        zeros.clone().index_add_(0, flat, m.reshape(-1).to(f64)).reshape(b, n)
        for m in (inrange, occ & inrange)
    )
    ids = torch.arange(n, device=seg.device)
    top_label = lab.amax(1, keepdim=True)  # each image's own max label: its candidates are 1..that
    # (n - id) / (n + 1) is in (0, 1) and falls with id: it orders equal counts by ascending id only
    score = nocc + (n - ids).to(f64) / (n + 1.0)
    score = torch.where((ids > 0) & (ids <= top_label), score, torch.full_like(score, -1.0))
    k = min(num_regions, n)
    top, labels = score.topk(k, dim=1)
    valid = top >= 0
    table = torch.full((b, n), num_regions, dtype=torch.int64, device=seg.device)
    slots = torch.arange(k, device=seg.device).expand(b, k)
    table.scatter_(1, labels, torch.where(valid, slots, torch.full_like(slots, num_regions)))
    slot = torch.where(inrange, table.gather(1, lab), torch.full_like(lab, num_regions))
    if k < num_regions:  # fewer pixels than regions asked for: pad so callers see num_regions slots
        pad = num_regions - k
        valid = torch.cat((valid, valid.new_zeros(b, pad)), 1)
        top = torch.cat((top, top.new_zeros(b, pad)), 1)
        labels = torch.cat((labels, labels.new_zeros(b, pad)), 1)
    sel_area = area.gather(1, labels) * valid
    return slot, valid, sel_area, labels * valid


def homography_loss(
    flow: torch.Tensor,
    full_seg: torch.Tensor,
    occ: torch.Tensor,
    *,
    ransac_thresh: float = RANSAC_THRESH["sintel"],
    num_regions: int = 6,
    min_visible: int = 4,
    min_visible_frac: float = 0.2,
    min_inlier_rate: float = 0.5,
    num_hypotheses: int = 128,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Homography smoothness of one flow direction, averaged over the batch.

    flow: (B, 2, H, W); full_seg: (B, 1, H, W) or (B, H, W) integer labels in [0, H*W) (the
    consecutive labels of a full segmentation; other values count as unlabelled); occ: same size,
    nonzero = occluded. A region is used only with >= min_visible and >= min_visible_frac of its
    pixels visible and an inlier rate >= min_inlier_rate. No host-device synchronisation on GPU.
    """
    b, _, h, w = flow.shape
    if full_seg.numel() != b * h * w or occ.numel() != b * h * w:
        raise BadInputError(
            f"homography_loss: flow is {b}x2x{h}x{w} but full_seg has shape {tuple(full_seg.shape)} "
            f"and occ {tuple(occ.shape)}"
        )
    seg = full_seg.reshape(b, -1).long()
    occb = occ.reshape(b, -1) != 0
    slot, valid, area, _ = select_regions(seg, occb, num_regions)
    group = (slot + num_regions * torch.arange(b, device=flow.device)[:, None]).reshape(-1)
    group = torch.where(slot.reshape(-1) < num_regions, group, torch.full_like(group, b * num_regions))
    src = mesh_grid(1, h, w, flow.device, flow.dtype).reshape(2, -1).t().repeat(b, 1)  # (B*N, 2)
    target = src + flow.permute(0, 2, 3, 1).reshape(-1, 2)  # x + flow(x): carries the gradient
    visible = ~occb.reshape(-1)
    if flow.device.type == "cpu":
        # Only pixels of selected regions matter. Dropping the others is a host-side index on CPU;
        # on GPU it would need a sync for the count, so there all pixels go through (group = none).
        keep = torch.nonzero(group < b * num_regions).squeeze(1)
        group, src, target, visible = group[keep], src[keep], target[keep], visible[keep]
    fit = fit_homographies(
        src, target.detach(), group, visible, b * num_regions,
        thresh=ransac_thresh, num_hypotheses=num_hypotheses, generator=generator,
    )
    nvis = fit.num_visible.to(area.dtype)
    area = area.reshape(-1)
    use = (
        valid.reshape(-1) & fit.ok & (nvis >= min_visible) & (nvis >= min_visible_frac * area)
        & (fit.inlier_rate >= min_inlier_rate)
    )
    used = torch.cat((use, use.new_zeros(1))).index_select(0, group)
    # H(x) in the flow's precision from H scaled to h33 = 1, as the reference applies OpenCV's H (float32):
    # on pixels that follow H exactly the residual is rounding noise, which then stays the reference's.
    projected = _project_like_reference(fit.H, src, group, flow.dtype)
    per_point = (projected - target).abs().sum(1)
    # mean over the batch of (sum over the image's used region pixels) / (H*W)
    return (per_point * used).sum() / (b * h * w)


def _project_like_reference(H: torch.Tensor, src: torch.Tensor, group: torch.Tensor, dtype) -> torch.Tensor:
    """Points src (P, 2) through their group's H (G, 3, 3; group G = identity), in `dtype`, h33 = 1."""
    h33 = H[:, 2, 2]
    H = H / torch.where(h33.abs() > 1e-12, h33, torch.ones_like(h33))[:, None, None]
    eye = torch.eye(3, dtype=H.dtype, device=H.device)[None]
    c = torch.cat((H, eye), 0).to(dtype).reshape(-1, 9).index_select(0, group)  # (P, 9)
    x, y = src[:, 0].to(dtype), src[:, 1].to(dtype)
    den = c[:, 6] * x + c[:, 7] * y + c[:, 8]
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    u = (c[:, 0] * x + c[:, 1] * y + c[:, 2]) / den
    v = (c[:, 3] * x + c[:, 4] * y + c[:, 5]) / den
    return torch.stack((u, v), 1)


def homography_loss_fwbw(
    flow12: torch.Tensor,
    flow21: torch.Tensor,
    seg1: torch.Tensor,
    seg2: torch.Tensor,
    occ1: torch.Tensor,
    occ2: torch.Tensor,
    **kwargs,
) -> torch.Tensor:
    """Mean of the forward (frame-1 regions) and backward (frame-2 regions) homography losses."""
    return (homography_loss(flow12, seg1, occ1, **kwargs) + homography_loss(flow21, seg2, occ2, **kwargs)) / 2


def homography_loss_reference(
    flow: np.ndarray, seg: np.ndarray, occ: np.ndarray, *, ransac_thresh: float, num_regions: int = 6,
    min_visible: int = 4, min_visible_frac: float = 0.2, min_inlier_rate: float = 0.5,
    shuffle_seed: int | None = None,
) -> float:
    """The plain reference design, for benchmarks and tests: loops over images and regions in numpy,
    one cv2.findHomography(RANSAC) per region. flow (B, 2, H, W), seg and occ (B, H, W) numpy.
    shuffle_seed: permute each region's correspondences first (OpenCV's RANSAC is deterministic for one
    point order; shuffles show its own spread)."""
    import cv2

    b, _, h, w = flow.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    total = 0.0
    for i in range(b):
        # the reference's candidates and order: ids 1..max, most occluded pixels first, ties by id
        counts = np.bincount(seg[i][occ[i].astype(bool)].ravel(), minlength=int(seg[i].max()) + 1)
        order = sorted(range(1, len(counts)), key=lambda lab: (-counts[lab], lab))[:num_regions]
        for lab in order:
            m = seg[i] == lab
            vis = m & ~occ[i]
            nvis = int(vis.sum())
            if nvis < min_visible or nvis < min_visible_frac * m.sum():
                continue
            src = np.stack((xs[vis], ys[vis]), -1)
            dst = src + np.stack((flow[i, 0][vis], flow[i, 1][vis]), -1)
            if shuffle_seed is not None:
                perm = np.random.default_rng(shuffle_seed).permutation(len(src))
                src, dst = src[perm], dst[perm]
            H, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_thresh)
            if H is None or mask.mean() < min_inlier_rate:
                continue
            allp = np.stack((xs[m], ys[m]), -1)
            pred = cv2.perspectiveTransform(allp[None].astype(np.float64), H)[0]
            target = allp + np.stack((flow[i, 0][m], flow[i, 1][m]), -1)
            total += float(np.abs(pred - target).sum())
    return total / (h * w) / b
