"""Photometric, occlusion and smoothness losses: exact cases, a naive reference and real Sintel frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from unsamflow.pipeline.flow.io import read_flo, read_mask_png
from unsamflow.pipeline.images import read_rgb
from unsamflow.trainer.losses import (
    census_distance,
    image_edge_weights,
    occlusion_fb,
    occlusion_range,
    photometric_level,
    photometric_loss,
    range_map,
    seg_edge_weights,
    smooth_1st,
    smooth_2nd,
    ssim_distance,
)
from unsamflow.trainer.warp import flow_warp


def _const_flow(b, h, w, u, v):
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = u, v
    return f


def test_fb_occlusion_consistent_and_inconsistent():
    f12, f21 = _const_flow(1, 16, 20, 3.0, 0.0), _const_flow(1, 16, 20, -3.0, 0.0)
    occ = occlusion_fb(f12, f21)
    # inside the image the round trip is exact; the last 3 columns sample f21 outside (zeros)
    assert occ[..., :, :16].sum() == 0
    assert occ[..., :, 17:].all()
    assert occlusion_fb(f12, _const_flow(1, 16, 20, 3.0, 0.0))[..., :, :10].all()  # both point the same way


def _naive_range(flow21: np.ndarray) -> np.ndarray:
    """One pixel at a time: the splat the vectorised range_map must reproduce."""
    _, h, w = flow21.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            px, py = x + flow21[0, y, x], y + flow21[1, y, x]
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            for xi in (x0, x0 + 1):
                for yi in (y0, y0 + 1):
                    if 0 <= xi < w and 0 <= yi < h:
                        out[yi, xi] += (1 - abs(px - xi)) * (1 - abs(py - yi))
    return out


def test_range_map_matches_naive_splat_and_marks_uncovered_pixels():
    rng = np.random.default_rng(0)
    f = rng.normal(0, 2, (2, 12, 15))
    got = range_map(torch.from_numpy(f)[None])[0, 0].numpy()
    assert np.allclose(got, _naive_range(f), atol=1e-9)
    # frame 2 moved 2 px right onto frame 1: frame-1 columns 0 and 1 receive nothing
    occ = occlusion_range(_const_flow(1, 8, 10, 2.0, 0.0))[0, 0]
    assert occ[:, :2].all() and not occ[:, 2:].any()
    assert not occlusion_range(torch.zeros(1, 2, 8, 10)).any()


def test_photometric_terms_on_exact_cases():
    rng = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 24, 32, generator=rng)
    vis = torch.ones(2, 1, 24, 32)
    assert float(ssim_distance(img, img).max()) < 1e-6
    assert float(census_distance(img, img).max()) == 0.0
    # census compares each pixel with its neighbours: blind to a brightness offset, unlike L1
    assert float(census_distance(img, img + 0.1).max()) < 1e-6
    assert float(photometric_level(img, img + 0.1, vis, w_l1=1, w_ssim=0)) == pytest.approx(0.1, rel=1e-4)
    # normalised by the visible fraction: a uniform error reads the same with half the pixels hidden
    half = vis.clone()
    half[..., :, 16:] = 0
    full = photometric_level(img, img + 0.1, vis, w_l1=1, w_ssim=0)
    masked = photometric_level(img, img + 0.1, half, w_l1=1, w_ssim=0)
    assert float(masked) == pytest.approx(float(full), rel=1e-3)


def test_photometric_loss_prefers_the_true_shift():
    img2 = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    img1 = torch.roll(img2, shifts=-2, dims=3)  # img1(x) = img2(x + 2): flow12 = +2, flow21 = -2
    good = ([_const_flow(1, 32, 48, 2.0, 0.0)], [_const_flow(1, 32, 48, -2.0, 0.0)])
    zero = ([torch.zeros(1, 2, 32, 48)], [torch.zeros(1, 2, 32, 48)])
    for kw in ({"w_l1": 0.15, "w_ssim": 0.85}, {"w_l1": 0, "w_ssim": 0, "w_ternary": 1}):
        lg, occ1, occ2 = photometric_loss(img1, img2, *good, **kw)
        lz, _, _ = photometric_loss(img1, img2, *zero, **kw)
        assert float(lg) < 0.05 * float(lz)
        assert occ1[..., -2:].all() and occ2[..., :2].all()  # what leaves the frame is occluded


def test_photometric_loss_is_the_mean_of_both_directions_with_border_padding():
    """Reference (ARFlow/UnSAMFlow with_bk): per level (forward + backward) / 2, images warped with
    border padding; a sum would double the photometric term against w_ar and w_hg."""
    g = torch.Generator().manual_seed(3)
    img1, img2 = torch.rand(1, 3, 24, 32, generator=g), torch.rand(1, 3, 24, 32, generator=g)
    f12, f21 = [_const_flow(1, 24, 32, 1.5, 0.5)], [_const_flow(1, 24, 32, -0.5, 1.0)]
    kw = {"w_l1": 0.15, "w_ssim": 0.85}
    loss, occ1, occ2 = photometric_loss(img1, img2, f12, f21, occlusion=None, **kw)
    fw = photometric_level(img1, flow_warp(img2, f12[0], padding_mode="border"), 1 - occ1, **kw)
    bw = photometric_level(img2, flow_warp(img1, f21[0], padding_mode="border"), 1 - occ2, **kw)
    assert float(loss) == pytest.approx(float(fw + bw) / 2, rel=1e-5)


def test_pyramid_levels_and_weights():
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    f = [torch.zeros(1, 2, 32 >> i, 32 >> i, requires_grad=True) for i in range(5)]
    loss, _, _ = photometric_loss(img, torch.flip(img, [3]), f, f)
    loss.backward()
    assert all(t.grad is not None for t in f[:4]) and f[4].grad is None  # level weights 1,1,1,1,0
    with pytest.raises(ValueError, match="levels"):
        photometric_loss(img, img, f, f[:3])


def test_smoothness_orders_and_edges():
    h, w = 16, 20
    xs = torch.arange(w, dtype=torch.float32).expand(1, 1, h, w)
    linear = torch.cat((0.5 * xs, torch.zeros_like(xs)), 1)
    img = torch.zeros(1, 3, h, w)
    assert float(smooth_1st(_const_flow(1, h, w, 3, -1), image_edge_weights(img))) == 0
    assert float(smooth_1st(linear, image_edge_weights(img))) > 0
    assert float(smooth_2nd(linear, image_edge_weights(img, step=2))) == pytest.approx(0, abs=1e-6)
    # a flow step exactly on a segment boundary costs nothing with segmentation edges
    seg = (xs >= 10).long()
    step = torch.cat((3.0 * seg, torch.zeros_like(xs)), 1)
    assert float(smooth_1st(step, seg_edge_weights(seg))) == 0
    assert float(smooth_2nd(step, seg_edge_weights(seg, step=2))) == 0
    assert float(smooth_1st(step, image_edge_weights(img))) > 0
    # an image edge at the step damps the penalty
    edge_img = seg.expand(1, 3, h, w).float()
    assert float(smooth_1st(step, image_edge_weights(edge_img))) < 0.01 * float(
        smooth_1st(step, image_edge_weights(img))
    )


def test_real_sintel_pair_gt_flow_beats_zero_flow(shared_data):
    root = shared_data / "sintel" / "training"
    im1 = read_rgb(root / "final" / "cave_2" / "frame_0002.png")[0]
    im2 = read_rgb(root / "final" / "cave_2" / "frame_0003.png")[0]
    gt, _ = read_flo(root / "flow" / "cave_2" / "frame_0002.flo")
    occ = read_mask_png(root / "occlusions" / "cave_2" / "frame_0002.png")

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()

    i1, i2, f = t(im1) / 255, t(im2) / 255, t(gt)
    # half resolution keeps the test quick; flow scales with it
    i1 = F.interpolate(i1, scale_factor=0.5, mode="area")
    i2 = F.interpolate(i2, scale_factor=0.5, mode="area")
    f = F.interpolate(f, scale_factor=0.5, mode="bilinear") * 0.5
    vis = 1 - F.interpolate(torch.from_numpy(occ)[None, None].float(), scale_factor=0.5, mode="nearest")
    for kw in ({"w_l1": 0.15, "w_ssim": 0.85}, {"w_l1": 0, "w_ssim": 0, "w_ternary": 1}):
        with_gt = photometric_level(i1, flow_warp(i2, f), vis, **kw)
        with_zero = photometric_level(i1, i2, vis, **kw)
        assert float(with_gt) < 0.6 * float(with_zero)
