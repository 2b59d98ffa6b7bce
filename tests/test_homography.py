"""Batched homography fit and the homography smoothness loss, against OpenCV and exact cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from unsamflow.trainer.homography_fit import fit_homographies, project
from unsamflow.trainer.losses.homography import (
    homography_loss,
    homography_loss_fwbw,
    homography_loss_reference,
    select_regions,
)


def _homography(rng: np.random.Generator) -> np.ndarray:
    H = np.eye(3) + np.diag([0.03, 0.03, 0]) * rng.normal(size=3)
    H[0, 1], H[1, 0] = rng.normal(0, 0.02, 2)
    H[:2, 2] = rng.uniform(-10, 10, 2)
    H[2, :2] = rng.normal(0, 1e-4, 2)
    return H


def _apply(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ H.T
    return p[:, :2] / p[:, 2:]


def test_fit_agrees_with_opencv_without_outliers():
    rng = np.random.default_rng(1)
    srcs, dsts, groups = [], [], []
    sizes = [30, 400, 5000]  # tiny to large regions, fitted together in one call
    for g, n in enumerate(sizes):
        src = rng.uniform([0, 0], [300, 200], (n, 2))
        srcs.append(src)
        dsts.append(_apply(_homography(rng), src) + rng.normal(0, 0.3, (n, 2)))
        groups.append(np.full(n, g))
    src, dst, group = (torch.from_numpy(np.concatenate(a)) for a in (srcs, dsts, groups))
    fit = fit_homographies(src, dst, group, torch.ones(len(src), dtype=torch.bool), len(sizes),
                           thresh=3.0, generator=torch.Generator().manual_seed(0))
    assert fit.ok.all()
    for g in range(len(sizes)):
        H_cv, mask = cv2.findHomography(srcs[g], dsts[g], cv2.RANSAC, 3.0)
        inl = mask.ravel() > 0
        H_ls, _ = cv2.findHomography(srcs[g][inl], dsts[g][inl], 0)  # OpenCV least squares on its inliers
        ours = project(fit.H[g], torch.from_numpy(srcs[g])).numpy()
        # OpenCV's RANSAC output itself wanders by a few hundredths of a pixel (its final refinement
        # stops early); against OpenCV's least squares on the same inliers we agree far closer.
        assert np.abs(ours - _apply(H_cv, srcs[g])).max() < 0.1
        assert np.abs(ours - _apply(H_ls, srcs[g])).max() < 0.01
        assert float(fit.inlier_rate[g]) == pytest.approx(inl.mean(), abs=0.01)


def test_fit_rejects_outliers_and_degenerate_groups():
    rng = np.random.default_rng(2)
    n = 2000
    src = rng.uniform(0, 200, (n, 2))
    H = _homography(rng)
    dst = _apply(H, src)
    out = rng.random(n) < 0.4  # 40 % gross outliers
    dst[out] += rng.uniform(-50, 50, (out.sum(), 2))
    line = np.c_[np.arange(50.0), np.full(50, 7.0)]  # collinear points
    same = np.full((20, 2), 3.0)  # coincident points
    pts = np.concatenate([src, line, same, src[:3]])
    tgt = np.concatenate([dst, line + 2, same + 1, dst[:3]])  # last group: only 3 points
    group = np.concatenate([np.zeros(n), np.ones(50), np.full(20, 2), np.full(3, 3)]).astype(np.int64)
    fit = fit_homographies(torch.from_numpy(pts), torch.from_numpy(tgt), torch.from_numpy(group),
                           torch.ones(len(pts), dtype=torch.bool), 4, thresh=1.0,
                           generator=torch.Generator().manual_seed(0))
    assert fit.ok.tolist() == [True, False, False, False]
    assert float(fit.inlier_rate[0]) == pytest.approx(1 - out.mean(), abs=0.01)
    err = np.abs(project(fit.H[0], torch.from_numpy(src)).numpy() - _apply(H, src)).max()
    assert err < 0.02  # outliers that happen to land within 1 px join the fit
    assert torch.isfinite(fit.H).all() and torch.isfinite(fit.projected).all()


def _region_flow(h, w, seg, rng):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    flow = np.zeros((2, h, w))
    for lab in np.unique(seg):
        m = seg == lab
        p = _apply(_homography(rng), np.c_[xs[m], ys[m]])
        flow[0][m], flow[1][m] = p[:, 0] - xs[m], p[:, 1] - ys[m]
    return flow


def synthetic_batch(b: int, h: int, w: int, regions: int, seed: int):
    """Rectangular regions, each moving by its own homography (+0.2 px noise); a vertical band of each
    region occluded with random flow there; 3 % of the visible pixels gross outliers."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, h, w), np.int64)
    for i in range(b):
        for k in range(1, regions + 1):
            y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 16)
            seg[i, y0 : y0 + rng.integers(12, h // 2), x0 : x0 + rng.integers(16, w // 3)] = k
    flow = np.stack([_region_flow(h, w, seg[i], rng) for i in range(b)]) + rng.normal(0, 0.2, (b, 2, h, w))
    occ = np.zeros((b, h, w), bool)
    xs = np.broadcast_to(np.arange(w), (h, w))
    for i in range(b):
        for k in np.unique(seg[i])[1:]:
            m = seg[i] == k
            occ[i] |= m & (xs < np.quantile(xs[m], rng.uniform(0.1, 0.6)))
    bad = occ | ((rng.random((b, h, w)) < 0.03) & (seg > 0))
    flow += np.where(bad[:, None], rng.uniform(-30, 30, (b, 2, h, w)), 0.0)
    return flow.astype(np.float32), seg, occ


def test_loss_is_zero_for_homography_flow():
    rng = np.random.default_rng(3)
    b, h, w = 2, 48, 64
    seg = np.zeros((b, h, w), np.int64)
    seg[:, 5:30, 5:40], seg[:, 20:45, 30:60], seg[:, 2:10, 50:62] = 1, 2, 3
    flow = np.stack([_region_flow(h, w, seg[i], rng) for i in range(b)])
    occ = rng.random((b, 1, h, w)) < 0.3
    ft = torch.tensor(flow, dtype=torch.float32, requires_grad=True)
    loss = homography_loss(ft, torch.from_numpy(seg), torch.from_numpy(occ), ransac_thresh=0.5)
    assert float(loss.detach()) < 1e-4  # float32 flow: only rounding remains
    loss.backward()
    assert torch.isfinite(ft.grad).all()
    # and clearly non-zero once the flow inside a region is not a homography
    bumped = flow.copy()
    bumped[:, 0, 10:20, 10:20] += 4.0
    worse = homography_loss(torch.tensor(bumped, dtype=torch.float32), torch.from_numpy(seg),
                            torch.from_numpy(occ), ransac_thresh=0.5)
    assert float(worse) > 0.1 * 100 * 4 / (h * w)


def test_loss_agrees_with_opencv_reference():
    flow, seg, occ = synthetic_batch(b=2, h=96, w=256, regions=7, seed=4)
    for thr in (3.0, 0.5):
        ref = homography_loss_reference(flow, seg, occ, ransac_thresh=thr)
        ours = float(homography_loss(torch.from_numpy(flow), torch.from_numpy(seg), torch.from_numpy(occ),
                                     ransac_thresh=thr, generator=torch.Generator().manual_seed(0)))
        assert ref > 0.05
        assert ours == pytest.approx(ref, rel=0.03)


def test_region_selection_and_visibility_rules():
    h, w = 20, 30
    seg = torch.zeros(1, h, w, dtype=torch.int64)
    occ = torch.zeros(1, h, w, dtype=torch.bool)
    for lab in range(1, 9):  # 8 regions, region k has k occluded pixels... except label 0
        seg[0, 2 * lab : 2 * lab + 2, :] = lab
        occ[0, 2 * lab, :lab] = True
    occ[0, 0, :] = True  # the background is the most occluded: it must not be chosen
    slot, valid, area, labels = select_regions(seg.reshape(1, -1), occ.reshape(1, -1), 6)
    chosen = sorted(int(seg.reshape(-1)[slot[0] == s][0]) for s in range(6))
    assert labels[0].tolist() == [8, 7, 6, 5, 4, 3]  # most occluded first
    assert chosen == [3, 4, 5, 6, 7, 8] and valid.all() and (area == 60).all()
    # an all-occluded region and one with 10 % visible pixels are skipped; random flow is rejected
    rng = np.random.default_rng(5)
    flow = torch.tensor(_region_flow(h, w, seg[0].numpy(), rng)[None], dtype=torch.float32)
    base = float(homography_loss(flow, seg, occ))
    assert base < 1e-4
    noisy = flow.clone()
    noisy[0, :, 4:6, :] += torch.from_numpy(rng.uniform(-30, 30, (2, 2, w))).float()  # label 2: noise
    occ2 = occ.clone()
    occ2[0, 6:8, :] = True  # label 3 all occluded
    occ2[0, 8:10, 6:] = True  # label 4: 6 of 60 pixels visible (< 20 %)
    noisy[0, :, 6:10, :] += 5.0  # labels 3 and 4 off a homography, but they are skipped
    assert float(homography_loss(noisy, seg, occ2)) < 1e-4  # label 2 has no occluded pixel: not chosen
    occ2[0, 4, 0] = True  # now label 2 is among the 6; its random flow fails the inlier test
    assert float(homography_loss(noisy, seg, occ2)) < 1e-4


def test_loss_without_usable_regions_is_zero_with_zero_gradient():
    f = torch.randn(2, 2, 10, 12, requires_grad=True)
    background = torch.zeros(2, 10, 12, dtype=torch.int64)
    loss = homography_loss(f, background, torch.zeros(2, 1, 10, 12))
    loss.backward()
    assert float(loss.detach()) == 0 and float(f.grad.abs().sum()) == 0
    one_region = torch.ones(2, 10, 12, dtype=torch.int64)
    assert float(homography_loss(f, one_region, torch.ones(2, 1, 10, 12)).detach()) == 0  # all occluded


def test_fwbw_is_the_mean_and_bad_shapes_fail():
    flow, seg, occ = synthetic_batch(b=1, h=64, w=96, regions=4, seed=6)
    f, s, o = torch.from_numpy(flow), torch.from_numpy(seg), torch.from_numpy(occ)
    g = torch.Generator
    l1 = homography_loss(f, s, o, generator=g().manual_seed(0))
    l2 = homography_loss(-f, s, o, generator=g().manual_seed(0))
    both = homography_loss_fwbw(f, -f, s, s, o, o, generator=g().manual_seed(0))
    assert float(both) == pytest.approx((float(l1) + float(l2)) / 2, rel=1e-3)
    with pytest.raises(ValueError, match="full_seg"):
        homography_loss(f, s[:, :10], o)
