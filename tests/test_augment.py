"""Augmentation (trainer/augment): spatial transforms checked by warping synthetic scenes with exact flow,
key-object pasting checked pixel by pixel, exact replay from a seed, and the cache's saved state."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.synthetic.scenes import config_for, make_scene
from unsamflow.trainer.augment import (
    SPATIAL_PRESETS,
    AffineParams,
    AppearanceConfig,
    AppearanceParams,
    AugmentedPair,
    KeyObjectCache,
    PasteParams,
    SpatialConfig,
    SpatialParams,
    appearance,
    apply_appearance,
    apply_spatial,
    crop_batch,
    draw_appearance_params,
    draw_spatial_params,
    occlusion_crop,
    place,
    spatial_pass,
)
from unsamflow.trainer.augment.spatial import frame_maps, inside
from unsamflow.trainer.losses.augmentation import masked_flow_loss
from unsamflow.trainer.warp import flow_warp, mesh_grid

pytestmark = pytest.mark.usefixtures("one_thread")
H, W = 96, 128


# -- synthetic scenes with exact flow -----------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes() -> AugmentedPair:
    """Four medium scenes (96 x 128, no lighting change or noise): frames, exact flow, noc, instances."""
    cfg = replace(config_for("medium", H, W, 2), lighting=0.0, noise=0.0)
    made = [make_scene(cfg, np.random.default_rng((11, i))) for i in range(4)]
    flows = [s.flow(0, 1) for s in made]

    def frames(t: int) -> torch.Tensor:
        return torch.stack([torch.from_numpy(s.frames[t]).permute(2, 0, 1).float() / 255 for s in made])

    return AugmentedPair.build(
        frames(0),
        frames(1),
        torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f, _ in flows]),
        torch.stack([torch.from_numpy(~o) for _, o in flows]),
        torch.stack([torch.from_numpy(s.instances[0].astype(np.int64)) for s in made]),
        torch.stack([torch.from_numpy(s.instances[1].astype(np.int64)) for s in made]),
    )


def warp_error(pair: AugmentedPair, flow: torch.Tensor | None = None) -> float:
    """Mean |frame 2 warped by flow - frame 1| over non-occluded pixels whose match stays in frame 2
    (a point that leaves the transformed view cannot be checked by warping)."""
    flow = pair.flow if flow is None else flow
    err = (flow_warp(pair.img2, flow) - pair.img1).abs().mean(1, keepdim=True)
    q = mesh_grid(flow.shape[0], H, W) + pair.flow
    seen = (q[:, 0] >= 0) & (q[:, 0] <= W - 1) & (q[:, 1] >= 0) & (q[:, 1] <= H - 1)
    m = pair.noc * seen.unsqueeze(1)
    return float((err * m).sum() / m.sum())


def affine(batch: int = 4, **values: float) -> AffineParams:
    a = AffineParams.identity(batch)
    for k, v in values.items():
        setattr(a, k, torch.full((batch,), float(v)))
    return a


SPATIAL_CASES = {
    "zoom": dict(glob=dict(zoom=1.3)),
    "squeeze": dict(glob=dict(zoom=1.3, squeeze=1.2)),
    "rotation": dict(glob=dict(zoom=1.3, angle=0.15)),
    "translation": dict(glob=dict(zoom=1.3, tx=0.15, ty=-0.12)),
    "relative": dict(glob=dict(zoom=1.25), rel=dict(zoom=1.03, squeeze=0.98, angle=0.03, tx=0.03, ty=0.02)),
    "hflip": dict(glob=dict(zoom=1.2), hflip=True),
    "vflip": dict(glob=dict(zoom=1.2), vflip=True),
}


@pytest.mark.parametrize("case", SPATIAL_CASES)
def test_transformed_flow_is_the_flow_between_the_transformed_frames(scenes, case):
    """Warp check on exact flow: as good after the transform as before it; a wrong flow is clearly worse."""
    spec = SPATIAL_CASES[case]
    params = SpatialParams.identity(4)
    params.glob = affine(**spec["glob"])
    params.rel = affine(**spec.get("rel", {}))
    params.hflip[:], params.vflip[:] = spec.get("hflip", False), spec.get("vflip", False)
    _, t1_inv, _, t2_inv = frame_maps(params, (H, W))
    assert inside(t1_inv, (H, W)).all() and inside(t2_inv, (H, W)).all()  # a draw the pass could make

    out = apply_spatial(scenes.img1, scenes.img2, scenes.flow, scenes.noc, scenes.seg1, scenes.seg2, params)
    base, err = warp_error(scenes), warp_error(out)
    assert err <= 1.5 * base + 0.002, (case, base, err)
    # The same pair with a wrong flow: the untransformed one, and for the relative map the flow that
    # ignores it (only the global map applied).
    wrong = warp_error(out, scenes.flow)
    if case == "relative":
        no_rel = replace(params, rel=AffineParams.identity(4))
        only_glob = apply_spatial(
            scenes.img1, scenes.img2, scenes.flow, scenes.noc, scenes.seg1, scenes.seg2, no_rel
        ).flow
        wrong = min(wrong, warp_error(out, only_glob))
    assert wrong > 2 * err, (case, err, wrong)
    # Labels travel with their pixels: the instance map of frame 1 still matches the frame's layers.
    assert set(out.seg1.unique().tolist()) <= set(scenes.seg1.unique().tolist())


def test_mirror_is_an_exact_flip_with_the_flow_component_negated(scenes):
    params = SpatialParams.identity(4)
    params.hflip[:] = True
    out = apply_spatial(scenes.img1, scenes.img2, scenes.flow, scenes.noc, scenes.seg1, scenes.seg2, params)
    torch.testing.assert_close(out.img1, scenes.img1.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.img2, scenes.img2.flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.flow[:, 0], -scenes.flow[:, 0].flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.flow[:, 1], scenes.flow[:, 1].flip(-1), atol=1e-4, rtol=0)
    assert torch.equal(out.seg1, scenes.seg1.flip(-1)) and torch.equal(out.noc, scenes.noc.flip(-1))
    params = replace(SpatialParams.identity(4), vflip=torch.ones(4, dtype=torch.bool))
    out = apply_spatial(scenes.img1, scenes.img2, scenes.flow, scenes.noc, scenes.seg1, scenes.seg2, params)
    torch.testing.assert_close(out.flow[:, 1], -scenes.flow[:, 1].flip(-2), atol=1e-4, rtol=0)
    assert torch.equal(out.seg2, scenes.seg2.flip(-2))


@pytest.mark.parametrize("preset", sorted(SPATIAL_PRESETS))
def test_drawn_transforms_stay_inside_and_pass_the_warp_check(scenes, preset):
    cfg = SPATIAL_PRESETS[preset]
    g = torch.Generator().manual_seed(3)
    params = draw_spatial_params(g, 256, (H, W), cfg)
    _, t1_inv, _, t2_inv = frame_maps(params, (H, W))
    assert inside(t1_inv, (H, W)).all() and inside(t2_inv, (H, W)).all()
    assert params.glob.zoom.min() >= cfg.zoom[0] and params.glob.zoom.max() <= cfg.zoom[1]
    assert (params.glob.zoom > 1.05).any() and (params.rel.angle != 0).any()  # not all identity
    assert params.hflip.any() and params.vflip.any() == cfg.vflip
    out = spatial_pass(
        scenes.img1,
        scenes.img2,
        scenes.flow,
        scenes.noc,
        scenes.seg1,
        scenes.seg2,
        replace(cfg, noise=0.0),
        g,
    )
    assert warp_error(out) <= 1.5 * warp_error(scenes) + 0.002
    # A range that can never fit falls back to the identity instead of looping.
    never = draw_spatial_params(g, 4, (H, W), replace(cfg, zoom=(0.5, 0.6, 1.0, 1.0)))
    assert torch.equal(never.glob.zoom, torch.ones(4))


def test_spatial_pass_adds_noise_and_replays_from_a_seed(scenes):
    args = (
        scenes.img1,
        scenes.img2,
        scenes.flow,
        scenes.noc,
        scenes.seg1,
        scenes.seg2,
        SPATIAL_PRESETS["sintel"],
    )
    a = spatial_pass(*args, torch.Generator().manual_seed(5))
    b = spatial_pass(*args, torch.Generator().manual_seed(5))
    c = spatial_pass(*args, torch.Generator().manual_seed(6))
    for name in ("img1", "img2", "flow", "noc", "seg1", "seg2"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.img1, c.img1)
    assert a.img1.min() >= 0 and a.img1.max() <= 1


# -- appearance ---------------------------------------------------------------------------------------
def _sequential_jitter(x: torch.Tensor, p: AppearanceParams) -> torch.Tensor:
    """torchvision's order, written out step by step (no clamping needed for mid-range inputs)."""
    v = lambda t: t.view(-1, 1, 1, 1, 1)  # noqa: E731
    grey = lambda y: 0.299 * y[:, :, :1] + 0.587 * y[:, :, 1:2] + 0.114 * y[:, :, 2:]  # noqa: E731
    y = x * v(p.brightness)
    m = grey(y).mean(dim=(1, 2, 3, 4), keepdim=True)
    y = m + v(p.contrast) * (y - m)
    y = grey(y) + v(p.saturation) * (y - grey(y))
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    q = torch.einsum("ij,btjhw->btihw", yiq, y)
    ang = 2 * torch.pi * v(p.hue)[:, :, 0]
    i, qq = q[:, :, 1] * ang.cos() - q[:, :, 2] * ang.sin(), q[:, :, 1] * ang.sin() + q[:, :, 2] * ang.cos()
    q = torch.stack((q[:, :, 0], i, qq), 2)
    return torch.einsum("ij,btjhw->btihw", torch.linalg.inv(yiq), q)


def test_colour_jitter_is_the_sequential_jitter_and_the_same_for_both_frames():
    g = torch.Generator().manual_seed(0)
    img1 = 0.4 + 0.2 * torch.rand(3, 3, 16, 24, generator=g)  # mid-range: no step saturates
    img2 = 0.4 + 0.2 * torch.rand(3, 3, 16, 24, generator=g)
    cfg = AppearanceConfig(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.05, blur=False)
    p = draw_appearance_params(g, 3, cfg)
    out1, out2 = apply_appearance(img1, img2, p)
    ref = _sequential_jitter(torch.stack((img1, img2), 1), p)
    torch.testing.assert_close(out1, ref[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out2, ref[:, 1], atol=1e-5, rtol=0)
    same1, same2 = appearance(img1, img1, replace(cfg, blur=True), torch.Generator().manual_seed(1))
    assert torch.equal(same1, same2)  # one draw per pair: equal frames stay equal (blur included)
    off = AppearanceConfig(brightness=0, contrast=0, saturation=0, hue=0, blur=False)
    torch.testing.assert_close(appearance(img1, img2, off, g)[0], img1, atol=1e-6, rtol=0)


def test_blur_gamma_and_noise():
    g = torch.Generator().manual_seed(2)
    img = torch.rand(6, 3, 20, 30, generator=g)
    off = AppearanceConfig(brightness=0, contrast=0, saturation=0, hue=0, blur=False)
    p = draw_appearance_params(g, 6, replace(off, blur=True))
    p.blur_sigma = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 3.0])
    p.blur_index = None
    out, _ = apply_appearance(img, img, p)
    torch.testing.assert_close(out[:2], img[:2], atol=1e-6, rtol=0)  # sigma 0: untouched
    spread = out.std(dim=(1, 2, 3))
    assert spread[2] > spread[3] > spread[4] and spread[2] < img[2].std()
    flat = torch.full((2, 3, 20, 30), 0.3)
    p.blur_sigma, p.blur_index = torch.tensor([2.0, 3.0]), None
    p.brightness, p.contrast, p.saturation, p.hue = (
        t[:2] for t in (p.brightness, p.contrast, p.saturation, p.hue)
    )
    torch.testing.assert_close(apply_appearance(flat, flat, p)[0], flat)
    gam = appearance(img, img, replace(off, gamma=(2.0, 2.0)), g)[0]
    torch.testing.assert_close(gam, img**2)
    a1, a2 = appearance(img, img, replace(off, noise=0.05), torch.Generator().manual_seed(4))
    b1, _ = appearance(img, img, replace(off, noise=0.05), torch.Generator().manual_seed(4))
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)  # replayable; independent noise per frame
    assert 0 < (a1 - img).abs().mean() < 0.05 and a1.min() >= 0 and a1.max() <= 1
    with pytest.raises(BadInputError, match="hue"):
        AppearanceConfig(hue=0.7)


# -- occlusion crop and loss -----------------------------------------------------------------------
def test_occlusion_crop_cuts_every_tensor_at_the_same_per_sample_window(scenes):
    g = torch.Generator().manual_seed(0)
    out = occlusion_crop(scenes, (64, 96), g)
    corners = torch.Generator().manual_seed(0)
    from unsamflow.trainer.augment import draw_crop_params

    c = draw_crop_params(corners, 4, (H, W), (64, 96))
    for b in range(4):
        x0, y0 = (int(v) for v in c[b])
        assert torch.equal(out.img1[b], scenes.img1[b, :, y0 : y0 + 64, x0 : x0 + 96])
        assert torch.equal(out.flow[b], scenes.flow[b, :, y0 : y0 + 64, x0 : x0 + 96])
        assert torch.equal(out.seg2[b], scenes.seg2[b, y0 : y0 + 64, x0 : x0 + 96])
    assert len({tuple(v.tolist()) for v in c}) > 1  # windows differ between samples
    assert torch.equal(crop_batch(scenes.noc, torch.zeros(4, 2, dtype=torch.long), (H, W)), scenes.noc)
    with pytest.raises(BadInputError, match="does not fit"):
        occlusion_crop(scenes, (H + 1, W), g)


def test_masked_flow_loss():
    pred = torch.zeros(1, 2, 2, 2, requires_grad=True)
    pseudo = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]], requires_grad=True)
    noc = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert masked_flow_loss(pred, pseudo, noc).item() == pytest.approx(
        (1 + 2) / 4, rel=1e-5
    )  # mean |d| over 2 px x 2
    ref = ((torch.tensor([1.0, 2.0, 0.0, 0.0]) + 0.01) ** 0.4).mean()
    assert masked_flow_loss(pred, pseudo, noc, eps=0.01, q=0.4).item() == pytest.approx(ref.item(), rel=1e-5)
    masked_flow_loss(pred, pseudo, noc).backward()
    assert pred.grad is not None and pseudo.grad is None  # the pseudo-label is a constant
    assert masked_flow_loss(pred, pseudo, torch.zeros(1, 2, 2)).item() == 0.0
    with pytest.raises(BadInputError, match="noc"):
        masked_flow_loss(pred, pseudo, torch.ones(1, 3, 3))


# -- key objects -----------------------------------------------------------------------------------
PH, PW, SLOT = 64, 128, (20, 32)


def _object_batch(positions: list[tuple[int, int]], motions: list[tuple[float, float]], seed: int) -> dict:
    """B frames, each with one 12 x 18 ellipse-ish key object at a position and a constant flow."""
    g = torch.Generator().manual_seed(seed)
    b = len(positions)
    yy, xx = torch.meshgrid(torch.arange(PH), torch.arange(PW), indexing="ij")
    masks = torch.zeros(b, 2, PH, PW, dtype=torch.bool)
    for i, (x, y) in enumerate(positions):
        masks[i, 0] = ((xx - x - 8.5) / 9) ** 2 + ((yy - y - 5.5) / 6) ** 2 <= 1
        masks[i, 1] = (xx == 0) & (yy == 0)  # a one-pixel mask: too small to be picked
    flow = torch.tensor(motions, dtype=torch.float32).view(b, 2, 1, 1).expand(b, 2, PH, PW).contiguous()
    img = (torch.randint(0, 256, (b, 3, PH, PW), generator=g) / 255.0).float()
    return {"img1": img, "key_masks": masks, "key_count": torch.full((b,), 2), "flow": flow}


def _target(seed: int, b: int = 2) -> AugmentedPair:
    g = torch.Generator().manual_seed(seed)
    return AugmentedPair.build(
        torch.rand(b, 3, PH, PW, generator=g),
        torch.rand(b, 3, PH, PW, generator=g),
        torch.zeros(b, 2, PH, PW),
        torch.zeros(b, PH, PW),
        torch.randint(0, 5, (b, PH, PW), generator=g),
        torch.randint(0, 7, (b, PH, PW), generator=g),
    )


POSITIONS = [[(10, 8), (70, 30)], [(40, 36), (96, 4)], [(8, 40), (40, 10)]]
MOTIONS = [[(4.0, -2.0), (-2.0, 2.0)], [(2.0, 2.0), (6.0, -2.0)], [(-2.0, -4.0), (2.0, 0.0)]]


@pytest.fixture()
def cache() -> tuple[KeyObjectCache, list[dict]]:
    """A full cache of 6 objects: three pushes of two frames, objects at known places and motions."""
    cache = KeyObjectCache(6, SLOT)
    batches = [_object_batch(POSITIONS[k], MOTIONS[k], seed=k) for k in range(3)]
    g = torch.Generator().manual_seed(0)
    for k, d in enumerate(batches):
        assert not cache.full and len(cache) == 2 * k
        cache.push(d["img1"], d["key_masks"], d["key_count"], d["flow"], g)
    assert cache.full and len(cache) == 6
    return cache, batches


def test_push_keeps_the_object_its_place_and_its_mean_motion(cache):
    cache, batches = cache
    torch.testing.assert_close(cache.motion[:6], torch.tensor(MOTIONS).view(6, 2))
    for slot in range(6):
        d, b = batches[slot // 2], slot % 2
        m = d["key_masks"][b, 0]
        framed = place(cache.objects[slot : slot + 1], cache.origin[slot : slot + 1].float(), (PH, PW))[0]
        assert torch.equal(framed[3] > 0.5, m)  # the small mask was never picked
        assert torch.equal(framed[:3][:, m], d["img1"][b][:, m])
    # Samples without a usable object push nothing; a non-constant flow gives the mean inside the mask.
    d = _object_batch([(50, 20), (0, 0)], [(0.0, 0.0), (0.0, 0.0)], seed=9)
    d["key_count"] = torch.tensor([2, 0])
    d["flow"] = mesh_grid(2, PH, PW).clone()
    cache.push(d["img1"], d["key_masks"], d["key_count"], d["flow"], torch.Generator().manual_seed(0))
    assert int(cache.count) == 7  # the ring replaced the oldest object (slot 0)
    ys, xs = d["key_masks"][0, 0].nonzero().float().unbind(1)
    torch.testing.assert_close(cache.motion[0], torch.stack((xs.mean(), ys.mean())))


@pytest.mark.parametrize(
    "scale,reverse,mirror", [(1.0, False, False), (1.5, False, False), (1.0, True, False), (1.0, False, True)]
)
def test_pasted_object_moves_by_its_motion_with_label_and_pseudo_label(cache, scale, reverse, mirror):
    cache, batches = cache
    pair = _target(seed=1)
    params = PasteParams(
        index=torch.tensor([[2, 3]]),
        scale=torch.full((1, 2), scale),
        reverse=torch.full((1, 2), reverse),
        mirror=torch.full((1, 2), mirror),
    )
    out = cache.apply_paste(pair, params)
    d = batches[1]
    for b in range(2):
        m = d["key_masks"][b, 0]
        src = d["img1"][b]
        if mirror:  # about the slot's centre: x -> 2 * x0 + slot_w - 1 - x
            x0 = int(cache.origin[2 + b, 0])
            cols = (2 * x0 + SLOT[1] - 1 - torch.arange(PW)).clamp(0, PW - 1)
            m, src = m[:, cols], src[:, :, cols]
        u, v = (
            torch.tensor(MOTIONS[1][b])
            * scale
            * (-1 if reverse else 1)
            * torch.tensor([-1 if mirror else 1, 1])
        ).tolist()
        assert torch.equal(out.img1[b][:, m], src[:, m])  # frame 1: the object at its place, exactly
        assert torch.equal(out.img1[b][:, ~m], pair.img1[b][:, ~m])
        ys, xs = m.nonzero().unbind(1)
        ys2, xs2 = ys + int(v), xs + int(u)
        assert torch.equal(out.img2[b][:, ys2, xs2], src[:, ys, xs])  # frame 2: at x + motion, exactly
        m2 = torch.zeros_like(m)
        m2[ys2, xs2] = True
        assert torch.equal(out.img2[b][:, ~m2], pair.img2[b][:, ~m2])
        assert torch.equal(out.flow[b][:, m], torch.tensor([u, v]).view(2, 1).expand(2, int(m.sum())))
        assert torch.equal(out.flow[b][:, ~m], pair.flow[b][:, ~m])
        assert out.noc[b, 0][m].eq(1).all() and out.noc[b, 0][~m].eq(0).all()
        new1, new2 = int(pair.seg1[b].max()) + 1, int(pair.seg2[b].max()) + 1
        assert torch.equal(out.seg1[b] == new1, m) and torch.equal(out.seg2[b] == new2, m2)
        assert torch.equal(out.seg1[b][~m], pair.seg1[b][~m])


def test_three_objects_per_sample_get_three_new_labels(cache):
    cache, batches = cache
    pair = _target(seed=2)
    params = PasteParams(
        index=torch.tensor([[0, 1], [2, 3], [4, 5]]),
        scale=torch.ones(3, 2),
        reverse=torch.zeros(3, 2, dtype=torch.bool),
        mirror=torch.zeros(3, 2, dtype=torch.bool),
    )
    out = cache.apply_paste(pair, params)
    for b in range(2):
        for seg, old in ((out.seg1[b], pair.seg1[b]), (out.seg2[b], pair.seg2[b])):
            top = int(old.max())
            labels = set(seg.unique().tolist())
            assert labels - set(old.unique().tolist()) == {top + 1, top + 2, top + 3}
        for r in range(3):  # each new label of frame 1 is exactly that object's mask
            assert torch.equal(out.seg1[b] == int(pair.seg1[b].max()) + 1 + r, batches[r]["key_masks"][b, 0])
    # Drawn: three rounds, distinct objects within a round, the label count grows by three.
    drawn = cache.paste(pair, torch.Generator().manual_seed(0), per_sample=3)
    p = cache.draw_paste_params(torch.Generator().manual_seed(0), 2, 3)
    assert all(len(set(row.tolist())) == 2 for row in p.index) and p.index.max() < 6
    for b in range(2):
        assert int(drawn.seg1[b].max()) == int(pair.seg1[b].max()) + 3
        assert (
            drawn.noc[b].sum() > 0
            and ((drawn.seg1[b] > int(pair.seg1[b].max())) == (drawn.noc[b, 0] > 0)).all()
        )


def test_sub_pixel_placement_keeps_mass_and_moves_the_centroid():
    g = torch.Generator().manual_seed(0)
    obj = torch.zeros(1, 4, 20, 32)
    obj[:, :, 5:14, 6:25] = torch.rand(1, 4, 9, 19, generator=g)
    a = place(obj, torch.tensor([[30.0, 20.0]]), (64, 128))
    assert torch.equal(a[:, :, 20:40, 30:62], obj)  # integer corner: an exact copy
    b = place(obj, torch.tensor([[32.5, 21.25]]), (64, 128))
    torch.testing.assert_close(b.sum((2, 3)), obj.sum((2, 3)))

    def centroid(x: torch.Tensor) -> torch.Tensor:
        g = mesh_grid(1, 64, 128)
        return (x[:, 3:] * g).sum((2, 3)) / x[:, 3:].sum((2, 3))

    torch.testing.assert_close(centroid(b) - centroid(a), torch.tensor([[2.5, 1.25]]))


def test_objects_from_larger_frames_paste_clipped_into_smaller_ones(cache):
    cache, _ = cache
    g = torch.Generator().manual_seed(0)
    small = AugmentedPair.build(
        torch.rand(2, 3, 32, 48, generator=g),
        torch.rand(2, 3, 32, 48, generator=g),
        torch.zeros(2, 2, 32, 48),
        torch.zeros(2, 32, 48),
        torch.zeros(2, 32, 48),
        torch.zeros(2, 32, 48),
    )
    out = cache.apply_paste(
        small,
        PasteParams(
            torch.tensor([[0, 3]]),
            torch.ones(1, 2),
            torch.zeros(1, 2, dtype=torch.bool),
            torch.zeros(1, 2, dtype=torch.bool),
        ),
    )
    assert out.img1.shape == (2, 3, 32, 48)
    assert (out.seg1[0] == 1).any()  # object 0 sits at (10, 8): inside
    assert not (out.seg1[1] == 1).any()  # object 3 sits at (96, 4): outside, nothing pasted
    assert torch.equal(out.img1[1], small.img1[1])


def test_an_empty_cache_pastes_nothing_and_refuses_a_bad_push():
    cache = KeyObjectCache(4, SLOT)
    pair = _target(seed=3)
    out = cache.paste(pair, torch.Generator().manual_seed(0))
    assert out is pair and not cache.full and len(cache) == 0
    d = _object_batch([(10, 8)], [(1.0, 1.0)], seed=0)
    cache.push(
        d["img1"], d["key_masks"][:, :0], torch.zeros(1, dtype=torch.long), d["flow"], torch.Generator()
    )
    assert len(cache) == 0  # frames without mask stores (K = 0) offer nothing
    with pytest.raises(BadInputError, match="push"):
        cache.push(d["img1"][:, :, :10], d["key_masks"], d["key_count"], d["flow"], torch.Generator())


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_cache_state_roundtrips_and_resumes_exactly(cache):
    cache, _ = cache
    restored = KeyObjectCache(6, SLOT)
    restored.load_state_dict(_roundtrip(cache.state_dict()))
    assert restored.full and len(restored) == 6
    pair = _target(seed=4)
    a = cache.paste(pair, torch.Generator().manual_seed(8))
    b = restored.paste(pair, torch.Generator().manual_seed(8))
    assert all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("img1", "img2", "flow", "noc", "seg1", "seg2")
    )
    d = _object_batch([(30, 30), (60, 12)], [(1.0, 0.0), (0.0, 1.0)], seed=5)
    for c in (cache, restored):
        c.push(d["img1"], d["key_masks"], d["key_count"], d["flow"], torch.Generator().manual_seed(1))
    s1, s2 = cache.state_dict(), restored.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in ("count", "objects", "origin", "motion"))
    empty = KeyObjectCache(6, SLOT)
    empty.load_state_dict(_roundtrip(KeyObjectCache(6, SLOT).state_dict()))
    assert empty.objects is None and len(empty) == 0
    with pytest.raises(BadInputError, match="capacity"):
        KeyObjectCache(7, SLOT).load_state_dict(_roundtrip(cache.state_dict()))


def test_the_whole_second_pass_replays_from_a_seed(scenes, cache):
    """appearance -> spatial pass; appearance -> paste -> crop; twice with one seed: identical."""
    cache, _ = cache
    state = cache.state_dict()

    def run(seed: int) -> list[torch.Tensor]:
        cache.load_state_dict(state)
        g = torch.Generator().manual_seed(seed)
        s = scenes
        img1, img2 = appearance(s.img1, s.img2, AppearanceConfig(noise=0.02), g)
        sp = spatial_pass(img1, img2, s.flow, s.noc, s.seg1, s.seg2, SpatialConfig(), g)
        small = AugmentedPair(
            *(
                crop_batch(t, torch.zeros(4, 2, dtype=torch.long), (PH, PW))
                for t in (img1, img2, s.flow, s.noc, s.seg1, s.seg2)
            )
        )
        occ = occlusion_crop(cache.paste(small, g), (48, 96), g)
        return [sp.img1, sp.img2, sp.flow, sp.noc, sp.seg1, occ.img1, occ.img2, occ.flow, occ.noc, occ.seg2]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[5], c[5])
