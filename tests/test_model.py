"""PWC-Lite and its mask feature module: size, shapes, direction symmetry, gradients, region pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.trainer.model import PWCLite, downsample_labels, region_max

pytestmark = pytest.mark.usefixtures("one_thread")


def region_max_loop(feat: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The definition, one image and one region at a time."""
    out = torch.empty_like(feat)
    for n in range(feat.shape[0]):
        for label in labels[n].unique():
            inside = labels[n] == label
            out[n][:, inside] = feat[n][:, inside].amax(dim=1, keepdim=True)
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, PWCLite]:
    torch.manual_seed(0)
    return {"base": PWCLite().eval(), "mf": PWCLite(mask_features=True).eval()}


@pytest.fixture(scope="module")
def real_pair(shared_data) -> tuple[torch.Tensor, torch.Tensor]:
    """Sintel alley_1 frames 2 and 3, a 64 x 128 crop, as (1, 3, H, W) in [0, 1]."""
    frames = []
    for name in ("frame_0002.png", "frame_0003.png"):
        rgb, _ = read_rgb(shared_data / "sintel/training/final/alley_1" / name)
        crop = np.ascontiguousarray(rgb[180:244, 420:548])
        frames.append(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    return frames[0], frames[1]


def _segs(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky label maps with sparse, large label values (like a store's after merging)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 6, (2 * b, 1, h // 16, w // 16), generator=g).float()
    labels = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long() * 1_000_003 + 7
    return labels[:b], labels[b:]


def test_parameter_counts(models):
    base = sum(p.numel() for p in models["base"].parameters())
    mf = sum(p.numel() for p in models["mf"].parameters())
    assert 2_200_000 <= base <= 2_600_000  # ARFlow's reduced PWC-Lite (~2.24 M) plus the convex upsampler
    # +mf: five 1x1 projections to 32, the shared 64->32 aggregation, 81 more estimator inputs.
    extra = sum(c * 32 + 32 for c in (192, 128, 96, 64, 32)) + (64 * 32 + 32) + 81 * 128 * 9
    assert mf - base == extra


@pytest.mark.parametrize("b, h, w", [(1, 64, 64), (2, 64, 128), (1, 128, 64)])
def test_output_pyramid_shapes(models, b, h, w):
    g = torch.Generator().manual_seed(h + w)
    img1, img2 = torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)
    with torch.no_grad():
        out = models["mf"](img1, img2, *_segs(b, h, w))
    assert set(out) == {"flows_fw", "flows_bw"}
    for key in out:
        assert [tuple(f.shape) for f in out[key]] == [(b, 2, h >> i, w >> i) for i in range(5)]
        assert all(torch.isfinite(f).all() for f in out[key])


@pytest.mark.parametrize("kind", ["base", "mf"])
def test_swapping_the_frames_swaps_forward_and_backward(models, real_pair, kind):
    img1, img2 = real_pair
    seg1, seg2 = _segs(1, *img1.shape[-2:])
    with torch.no_grad():
        a = models[kind](img1, img2, seg1, seg2)
        b = models[kind](img2, img1, seg2, seg1)
    for fa, fb in zip(a["flows_fw"], b["flows_bw"], strict=True):
        torch.testing.assert_close(fa, fb, atol=1e-4, rtol=1e-4)
    for fa, fb in zip(a["flows_bw"], b["flows_fw"], strict=True):
        torch.testing.assert_close(fa, fb, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a["flows_fw"][0], a["flows_bw"][0])  # the two directions are not one output


@pytest.mark.parametrize("kind", ["base", "mf"])
def test_forward_only_matches_the_joint_pass(models, real_pair, kind):
    segs = _segs(1, *real_pair[0].shape[-2:])
    with torch.no_grad():
        both = models[kind](*real_pair, *segs)
        fw = models[kind](*real_pair, *segs, with_bw=False)
    assert set(fw) == {"flows_fw"}
    for f, g in zip(fw["flows_fw"], both["flows_fw"], strict=True):
        torch.testing.assert_close(f, g, atol=1e-4, rtol=1e-4)


def test_mask_features_use_regions_not_label_values(real_pair):
    # He-normal weights: with PyTorch's default initialisation the untrained flows are so small (a few px)
    # that other regions change them by only ~1e-5 px, too close to float32 noise to tell apart.
    torch.manual_seed(0)
    model = PWCLite(mask_features=True, init="kaiming").eval()
    size = real_pair[0].shape[-2:]
    seg1, seg2 = _segs(1, *size)
    with torch.no_grad():
        out = model(*real_pair, seg1, seg2)["flows_fw"][0]
        # Renaming the labels (any injective map) must not change anything ...
        renamed = model(*real_pair, (seg1 * 3) % 1_000_033 - 2**40, seg2 + 2**50)["flows_fw"][0]
        # ... but other regions must.
        other = model(*real_pair, *_segs(1, *size, seed=5))["flows_fw"][0]
    torch.testing.assert_close(out, renamed, atol=1e-4, rtol=1e-5)
    assert (out - other).abs().max() > 1e-2, float((out - other).abs().max())


@pytest.mark.parametrize("kind", ["base", "mf"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(1)
    model = PWCLite(mask_features=kind == "mf")
    img1, img2 = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = model(img1, img2, *_segs(2, 64, 64))
    loss = sum(f.abs().mean() for key in out for f in out[key])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([[[3, 3, 90], [90, 3, 7]], [[3, 3, 3], [5, 5, 3]]]),  # same label, two images
        torch.tensor([[[2**62, -(2**62), 5], [2**62, 0, 5]], [[-1, -1, -1], [-1, 2**40, -1]]]),  # huge
        torch.zeros(2, 2, 3, dtype=torch.long),  # one region per image
        torch.arange(12).view(2, 2, 3) * 1000,  # every pixel its own region
    ],
)
def test_region_max_matches_the_loop(labels):
    feat = torch.randn(2, 4, 2, 3, generator=torch.Generator().manual_seed(int(labels.sum() % 1000)))
    torch.testing.assert_close(region_max(feat, labels), region_max_loop(feat, labels), atol=0, rtol=0)


def test_region_max_on_a_larger_map_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 40, (3, 17, 23), generator=g) * 97 + 11
    feat = torch.randn(3, 5, 17, 23, generator=g, requires_grad=True)
    pooled = region_max(feat, labels)
    torch.testing.assert_close(pooled, region_max_loop(feat.detach(), labels), atol=0, rtol=0)
    pooled.sum().backward()
    # Each region's max receives one unit of gradient per pixel of the region it is broadcast to.
    counts = torch.stack([(labels[n][..., None, None] == labels[n]).sum((-1, -2)) for n in range(3)])
    is_max = feat.detach() == pooled.detach()
    torch.testing.assert_close(feat.grad, (is_max * counts[:, None]).float())


def test_region_max_with_as_many_regions_as_pixels():
    feat = torch.randn(2, 3, 20, 30, generator=torch.Generator().manual_seed(5))
    labels = torch.randperm(2 * 20 * 30).view(2, 20, 30) * 2**40
    torch.testing.assert_close(region_max(feat, labels), feat, atol=0, rtol=0)


def test_region_max_on_empty_maps():
    feat = torch.randn(2, 4, 0, 5)
    assert region_max(feat, torch.zeros(2, 0, 5, dtype=torch.long)).shape == (2, 4, 0, 5)


def test_downsample_labels_is_nearest_and_exact_for_huge_labels():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 200, (2, 37, 53), generator=g)
    for size in [(18, 26), (5, 7), (37, 53), (9, 13)]:
        expect = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        assert torch.equal(downsample_labels(labels, size), expect)
    huge = labels + 2**60 + 1  # not representable in float32
    assert torch.equal(downsample_labels(huge, (9, 13)) - (2**60 + 1), downsample_labels(labels, (9, 13)))


def test_bad_inputs_name_what_is_wrong(models):
    base, mf = models["base"], models["mf"]
    img = torch.rand(1, 3, 64, 128)
    with pytest.raises(BadInputError, match=r"image size 64x100 .* multiple of 64"):
        base(torch.rand(1, 3, 64, 100), torch.rand(1, 3, 64, 100))
    with pytest.raises(
        BadInputError, match=r"img1 must be an image batch \(B, 3, H, W\), got \(1, 1, 64, 128\)"
    ):
        base(torch.rand(1, 1, 64, 128), img)
    with pytest.raises(BadInputError, match=r"img1 \(1, 3, 64, 128\) and img2 \(2, 3, 64, 128\) differ"):
        base(img, torch.rand(2, 3, 64, 128))
    with pytest.raises(BadInputError, match="float tensor"):
        base((img * 255).to(torch.uint8), (img * 255).to(torch.uint8))
    with pytest.raises(BadInputError, match="needs full_seg1"):
        mf(img, img)
    seg = torch.zeros(1, 64, 128, dtype=torch.long)
    with pytest.raises(
        BadInputError, match=r"full_seg2 is \(1, 32, 64\), must be \(B, H, W\) = \(1, 64, 128\)"
    ):
        mf(img, img, seg, torch.zeros(1, 32, 64, dtype=torch.long))
    with pytest.raises(BadInputError, match="full_seg1 must hold integer labels"):
        mf(img, img, seg.float(), seg)
    with pytest.raises(BadInputError, match="labels .* must be .* of features"):
        region_max(torch.zeros(1, 4, 3, 3), torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(BadInputError, match="num_levels"):
        PWCLite(num_levels=7)


def test_normalized_cost_features_are_centred_unit_and_find_a_shift_an_untrained_pyramid_misses(shared_data):
    """model.normalize_corr_features: per pair, channel means over both frames removed, each pixel vector at
    unit RMS; on a real frame shifted by (8, 4) px the untrained pyramid's 1/4-level cost volume then peaks
    at the shift for most pixels, where the raw one (the reference's) is near chance (1/81)."""
    from unsamflow.trainer.model.correlation import correlation
    from unsamflow.trainer.model.pwclite import normalize_for_costs

    feats = torch.randn(4, 8, 5, 6) * 3 + torch.arange(8.0)[None, :, None, None]
    out = normalize_for_costs(feats)
    torch.testing.assert_close(out.pow(2).mean(1), torch.ones(4, 5, 6), atol=1e-4, rtol=0)
    offset = torch.randn(2, 8, 1, 1) * 10  # one per pair and channel, shared by both frames: says nothing
    shifted = normalize_for_costs(feats + torch.cat((offset, offset)))
    torch.testing.assert_close(shifted, out, atol=1e-4, rtol=0)
    mean = 0.5 * (feats[:2].mean((2, 3), keepdim=True) + feats[2:].mean((2, 3), keepdim=True))
    centred = feats - torch.cat((mean, mean))
    torch.testing.assert_close(out * centred.pow(2).mean(1, keepdim=True).sqrt(), centred, atol=1e-4, rtol=0)
    flat = torch.ones(2, 4, 3, 3, requires_grad=True)  # equal, flat frames: every centred vector is 0
    normalize_for_costs(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()  # (a sqrt of the mean square gave NaN here: seen on a GPU)
    assert normalize_for_costs(feats.half()).dtype == torch.float32  # fp16 squares overflow

    rgb, _ = read_rgb(shared_data / "sintel/training/final/alley_1/frame_0002.png")
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
    dx, dy = 8, 4
    img1, img2 = img[..., 64:192, 64:320], img[..., 64 - dy : 192 - dy, 64 - dx : 320 - dx]
    torch.manual_seed(0)
    model = PWCLite()
    with torch.no_grad():
        f = model.pyramid(torch.cat((img1, img2)))[4]  # 1/4 level: the shift is (2, 1) there
        hits = {}
        for name, g in (("raw", f), ("normalized", normalize_for_costs(f))):
            best = correlation(g[:1], g[1:], 4, 16)[0].argmax(0)
            hits[name] = float(((best // 9 - 4 == dy // 4) & (best % 9 - 4 == dx // 4)).float().mean())
        plain = model(img1, img2, with_bw=False)
        model.normalize_corr_features = True
        normed = model(img1, img2, with_bw=False)
    assert hits["normalized"] > 0.3 and hits["raw"] < 0.1, hits
    assert not torch.allclose(plain["flows_fw"][0], normed["flows_fw"][0])
    assert PWCLite(normalize_corr_features=True).state_dict().keys() == model.state_dict().keys()
