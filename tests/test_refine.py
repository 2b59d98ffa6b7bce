"""refine_flow and `python -m unsamflow.trainer refine`: recovery, region choice, layouts and bad input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.flow.io import read_flo, write_flo
from unsamflow.trainer.cli import main as trainer_cli
from unsamflow.trainer.refine import refine_flow

H, W = 60, 80


def _scene(seed: int = 0, noise: float = 0.3):
    """Two regions moving by their own homography, a background; noisy flow and the exact one."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    seg = np.zeros((H, W), np.int64)
    seg[5:35, 5:45], seg[30:55, 40:75] = 1, 2
    exact = np.zeros((H, W, 2))
    for lab in (1, 2):
        Hm = np.eye(3) + np.diag([0.02, -0.02, 0]) * lab
        Hm[:2, 2] = (2.0 * lab, -1.5)
        Hm[2, 0] = 1e-4
        m = seg == lab
        p = Hm @ np.stack((xs[m], ys[m], np.ones(m.sum())))
        exact[m] = np.stack((p[0] / p[2] - xs[m], p[1] / p[2] - ys[m]), -1)
    noisy = (exact + rng.normal(0, noise, exact.shape)).astype(np.float32)
    return noisy, exact.astype(np.float32), seg


def test_refine_recovers_region_homographies_and_leaves_the_rest():
    noisy, exact, seg = _scene()
    out, report = refine_flow(noisy, seg)
    fg = seg > 0
    assert np.abs(out - exact)[fg].mean() < 0.2 * np.abs(noisy - exact)[fg].mean()  # LS over ~1000 px
    assert np.array_equal(out[~fg], noisy[~fg])  # background (label 0) untouched by default
    assert report.num_refined == 2 and report.refined_pixels == fg.sum()
    assert {r.label for r in report.regions} == {1, 2}


def test_occluded_pixels_are_filled_and_not_fitted():
    noisy, exact, seg = _scene(1)
    occ = np.zeros((H, W), bool)
    occ[5:35, 5:20] = True
    noisy[occ] = 25.0  # garbage where occluded
    out, _ = refine_flow(noisy, seg, occ=occ, ransac_thresh=1.0)
    assert np.abs(out - exact)[occ].max() < 0.3


def test_region_choice_and_thresholds():
    noisy, exact, seg = _scene(2)
    _, rep = refine_flow(noisy, seg, regions="largest-1")
    assert [r.label for r in rep.regions] == [1]  # 1175 pixels beat 875
    occ = np.zeros((H, W), bool)
    occ[50:55, 40:60] = True
    _, rep = refine_flow(noisy, seg, occ=occ, regions="occluded-1")
    assert [r.label for r in rep.regions] == [2]
    rough = noisy.copy()
    rough[seg == 2] += np.random.default_rng(0).uniform(-20, 20, ((seg == 2).sum(), 2)).astype(np.float32)
    out, rep = refine_flow(rough, seg)
    assert [r.refined for r in rep.regions] == [True, False] and "inlier rate" in rep.regions[1].reason
    assert np.array_equal(out[seg == 2], rough[seg == 2])
    _, rep = refine_flow(noisy, seg, min_pixels=2000)
    assert rep.num_refined == 0 and all("min_pixels" in r.reason for r in rep.regions)
    _, rep = refine_flow(noisy, seg, include_background=True)
    assert 0 in {r.label for r in rep.regions}


def test_batched_torch_layout_matches_single_images():
    a, _, seg = _scene(3)
    b, _, _ = _scene(4)
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    segs = torch.from_numpy(np.stack([seg, seg]))
    out, rep = refine_flow(batch, segs)
    assert isinstance(out, torch.Tensor) and out.shape == batch.shape and out.dtype == batch.dtype
    single, _ = refine_flow(torch.from_numpy(a), seg)
    assert isinstance(single, torch.Tensor) and single.shape == (H, W, 2)
    assert torch.allclose(out[0].permute(1, 2, 0), single, atol=1e-4)
    assert {r.image for r in rep.regions} == {0, 1}


def test_huge_label_counts_and_odd_labels_have_defined_behaviour():
    noisy, exact, seg = _scene(5)
    big = seg * 10**12  # huge label values: renumbered, same result
    out_big, _ = refine_flow(noisy, big)
    out, _ = refine_flow(noisy, seg)
    assert np.array_equal(out, out_big)
    unique = np.arange(H * W).reshape(H, W) + 1  # every pixel its own region: nothing to fit
    out_u, rep = refine_flow(noisy, unique)
    assert np.array_equal(out_u, noisy) and rep.num_refined == 0 and len(rep.regions) == H * W
    out_bg, rep = refine_flow(noisy, np.zeros((H, W), np.uint16))  # only background
    assert np.array_equal(out_bg, noisy) and rep.regions == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flow": np.zeros((H, W, 3), np.float32)}, "H x W x 2"),
        ({"seg": np.zeros((H, W + 1), np.int64)}, "full_seg has shape"),
        ({"seg": np.zeros((0, 0), np.int64)}, "empty"),
        ({"seg": np.full((H, W), 1.5)}, "integer labels"),
        ({"seg": -np.ones((H, W), np.int64)}, "negative"),
        ({"occ": np.zeros((H, 3), bool)}, "occ mask has shape"),
        ({"regions": "biggest-3"}, "largest-N"),
        ({"regions": "occluded-2"}, "needs an occlusion mask"),
        ({"ransac_thresh": 0.0}, "ransac_thresh"),
        ({"min_pixels": 2}, "min_pixels"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(change, message):
    noisy, _, seg = _scene()
    kw = {"flow": noisy, "seg": seg, **change}
    flow, full_seg = kw.pop("flow"), kw.pop("seg")
    with pytest.raises(BadInputError, match=message):
        refine_flow(flow, full_seg, **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_flow_is_refused(bad):
    noisy, _, seg = _scene()
    noisy[3, 4, 1] = bad
    with pytest.raises(BadInputError, match="1 NaN/Inf"):
        refine_flow(noisy, seg)


def test_cli_refines_a_real_sintel_flow(tmp_path, shared_data):
    root = shared_data / "sintel" / "training"
    flo = root / "flow" / "alley_1" / "frame_0002.flo"
    gt, _ = read_flo(flo)
    seg = np.zeros(gt.shape[:2], np.uint16)
    seg[150:300, 300:500] = 40000  # 16-bit labels
    noisy = gt + np.random.default_rng(0).normal(0, 0.5, gt.shape).astype(np.float32)
    write_flo(tmp_path / "in.flo", noisy)
    cv2.imwrite(str(tmp_path / "seg.png"), seg)
    args = ["refine", "--flow", str(tmp_path / "in.flo"), "--seg", str(tmp_path / "seg.png"),
            "--out", str(tmp_path / "out.flo"), "--report", str(tmp_path / "r.json"),
            "--occ", str(root / "occlusions" / "alley_1" / "frame_0002.png"),
            "--rule", "any"]  # i.i.d. noise of 0.5 px leaves 13 % outliers: the default rule keeps it
    res = CliRunner().invoke(trainer_cli, args)
    assert res.exit_code == 0, res.output
    out, valid = read_flo(tmp_path / "out.flo")
    assert valid.all() and out.shape == gt.shape
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["regions"][0]["label"] == 40000
    pic = cv2.imread(str(tmp_path / "out_refine.png"))
    # three tiles side by side, with titles above and the colour-wheel and error scales below
    assert pic is not None and pic.shape[0] > gt.shape[0] and pic.shape[1] > 3 * gt.shape[1]
    m = seg > 0
    assert np.array_equal(out[~m], noisy[~m])  # only the region may change
    # The one region is refined: its flow changed, and the noise is gone from it ...
    assert report["num_refined"] == 1, report
    assert not np.array_equal(out[m], noisy[m])
    # ... by a homography's flow: a homography fitted to the output explains every pixel of it exactly.
    ys, xs = np.nonzero(m)
    src = np.stack([xs, ys], 1).astype(np.float64)
    dst = src + out[m].astype(np.float64)
    hom, _ = cv2.findHomography(src, dst, 0)
    fitted = cv2.perspectiveTransform(src[None], hom)[0]
    assert np.abs(fitted - dst).max() < 1e-2
    assert report["regions"][0]["refined"] and report["regions"][0]["reason"] == "refined"
    bad = CliRunner().invoke(trainer_cli, ["refine", "--flow", str(tmp_path / "in.flo"),
                                           "--out", str(tmp_path / "x.flo")])
    assert bad.exit_code == 2 and "exactly one of --seg" in bad.output
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), seg[:10, :10])
    bad = CliRunner().invoke(trainer_cli, ["refine", "--flow", str(tmp_path / "in.flo"), "--seg", str(small),
                                           "--out", str(tmp_path / "x.flo")])
    assert bad.exit_code == 2 and "small.png" in bad.output and "10x10" in bad.output


def test_cli_reads_the_segmentation_from_a_mask_store(tmp_path):
    from unsamflow.pipeline.derive import full_segmentation
    from unsamflow.pipeline.store import StoreWriter
    from unsamflow.pipeline.store.index import build_index

    noisy, exact, seg = _scene(6)
    masks = np.stack([seg == 1, seg == 2])
    records = [
        {"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 1, 1], "predicted_iou": 1.0,
         "stability_score": 1.0, "point_coords": [[0, 0]], "crop_box": [0, 0, W, H]}
        for m in masks
    ]
    with StoreWriter(tmp_path / "stores" / "s.h5", segmenter={"name": "test"}, derive_config={},
                     source={}) as sw:
        sw.add_frame("seq/f1.png", image_shape=(H, W), sha256="0" * 64, records=records,
                     full_seg=full_segmentation(masks), key_objects=np.zeros(0, np.int64))
    build_index(tmp_path / "stores")
    write_flo(tmp_path / "in.flo", noisy)
    base = ["refine", "--flow", str(tmp_path / "in.flo"), "--store", str(tmp_path / "stores"),
            "--out", str(tmp_path / "out.flo"), "--rule", "any"]  # whole regions: i.i.d. noise everywhere
    res = CliRunner().invoke(trainer_cli, [*base, "--frame", "seq/f1.png"])
    assert res.exit_code == 0, res.output
    out, _ = read_flo(tmp_path / "out.flo")
    assert np.abs(out - exact)[seg > 0].mean() < 0.2 * np.abs(noisy - exact)[seg > 0].mean()
    res = CliRunner().invoke(trainer_cli, [*base, "--frame", "seq/nope.png"])
    assert res.exit_code == 2 and "seq/nope.png" in res.output


# --- the default rule ("one-motion"): refine only what one homography explains ---


def _planar(h: int = 60, w: int = 80):
    """One region (label 1) moving by one homography; background label 0. Returns exact flow and seg."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    hm = np.array([[1.02, 0.01, 2.5], [-0.01, 0.98, -1.0], [1e-4, -5e-5, 1.0]])
    p = np.einsum("ij,jhw->ihw", hm, np.stack((xs, ys, np.ones_like(xs))))
    flow = np.stack((p[0] / p[2] - xs, p[1] / p[2] - ys), -1).astype(np.float32)
    seg = np.zeros((h, w), np.int64)
    seg[10:50, 10:70] = 1
    return flow, seg


def test_default_rule_replaces_only_the_pixels_that_disagree_with_the_fit():
    from unsamflow.trainer.refine import DEFAULT_RULE

    exact, seg = _planar()
    bad = np.zeros(seg.shape, bool)
    bad[20:25, 20:30] = True  # 50 of 2400 region pixels: a flow error inside a planar region
    flow = exact.copy()
    flow[bad] += np.float32([6.0, -4.0])
    out, rep = refine_flow(flow, seg, rule=DEFAULT_RULE)
    assert rep.num_refined == 1 and rep.replaced_pixels == bad.sum()
    assert np.abs(out - exact)[seg == 1].max() < 1e-3  # the error is gone, exactly
    assert np.array_equal(out[~bad], flow[~bad])  # every pixel that agreed keeps its own flow
    whole, rep_whole = refine_flow(flow, seg, rule="any")  # the earlier rule replaces the whole region
    assert rep_whole.replaced_pixels == (seg == 1).sum() and np.abs(whole - exact)[seg == 1].max() < 1e-3


def test_default_rule_leaves_a_region_of_two_motions_alone():
    exact, seg = _planar()
    flow = exact.copy()
    right = (seg == 1) & (np.arange(seg.shape[1])[None] >= 48)  # 45 % of the region moves otherwise
    flow[right] += np.float32([3.0, 2.0])
    out, rep = refine_flow(flow, seg, rule="one-motion")
    assert rep.num_refined == 0 and "inlier rate" in rep.regions[0].reason
    assert np.array_equal(out, flow)
    _, rep_any = refine_flow(flow, seg, rule="any")  # inlier rate 0.55 passes the lenient rule
    assert rep_any.num_refined == 1


def test_default_rule_does_not_extrapolate_from_a_mostly_occluded_region():
    exact, seg = _planar()
    occ = np.zeros(seg.shape, bool)
    occ[10:50, 10:50] = True  # two thirds of the region are not usable for the fit
    flow = exact.copy()
    flow[occ] = 9.0
    out, rep = refine_flow(flow, seg, occ=occ, rule="one-motion")
    assert rep.num_refined == 0 and "too few usable pixels" in rep.regions[0].reason
    assert np.array_equal(out, flow)
    out_any, rep_any = refine_flow(flow, seg, occ=occ, rule="any")  # visible >= 0.2 is enough there
    assert rep_any.num_refined == 1 and np.abs(out_any - exact)[seg == 1].max() < 1e-3


def test_rules_options_and_determinism():
    from unsamflow.trainer.commands.refine import DEFAULT_RULE as CLI_DEFAULT
    from unsamflow.trainer.commands.refine import RULE_NAMES
    from unsamflow.trainer.refine import DEFAULT_RULE, RULES

    assert set(RULE_NAMES) == set(RULES) and CLI_DEFAULT == DEFAULT_RULE  # the CLI spells them out
    noisy, _, seg = _scene(7, noise=0.6)
    a, rep_a = refine_flow(noisy, seg, rule="one-motion", seed=3)
    b, rep_b = refine_flow(noisy, seg, rule="one-motion", seed=3)
    assert np.array_equal(a, b) and rep_a.to_dict() == rep_b.to_dict()  # same seed, same result
    # an explicit option overrides the rule's: a lenient rate refines what the strict one leaves
    _, strict = refine_flow(noisy, seg, rule="one-motion")
    _, lenient = refine_flow(noisy, seg, rule="one-motion", min_inlier_rate=0.5)
    assert strict.num_refined == 0 and lenient.num_refined == 2
    with pytest.raises(BadInputError, match="rule must be one of"):
        refine_flow(noisy, seg, rule="best")
    with pytest.raises(BadInputError, match="needs an occlusion mask"):
        refine_flow(noisy, seg, rule="loss")  # the loss's rule picks the most occluded regions


def test_cli_default_rule_keeps_agreeing_pixels(tmp_path):
    exact, seg = _planar()
    flow = exact.copy()
    flow[20:25, 20:30] += np.float32([6.0, -4.0])
    write_flo(tmp_path / "in.flo", flow)
    cv2.imwrite(str(tmp_path / "seg.png"), seg.astype(np.uint16))
    res = CliRunner().invoke(trainer_cli, ["refine", "--flow", str(tmp_path / "in.flo"), "--seg",
                                           str(tmp_path / "seg.png"), "--out", str(tmp_path / "out.flo"),
                                           "--report", str(tmp_path / "r.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "rule one-motion" in res.output
    out, _ = read_flo(tmp_path / "out.flo")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_refined"] == 1 and report["replaced_pixels"] == 50
    assert np.abs(out - exact)[seg == 1].max() < 1e-3
