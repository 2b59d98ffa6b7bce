"""Synthetic scenes: the ground truth is checked by warping, by hand-built scenes, and on disk."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.flow.datasets import open_dataset
from unsamflow.pipeline.layouts import scan
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segmenters.base import RECORD_KEYS
from unsamflow.pipeline.synthetic.scenes import (
    Layer,
    Motion,
    Scene,
    SceneConfig,
    config_for,
    instance_records,
    make_scene,
    make_texture,
)


def warp_back(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """img (frame s) sampled at x + flow(x): brings frame s onto frame t's grid (bilinear)."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)  # fmt: skip


def same_layer_footprint(scene: Scene, t: int, s: int, flow: np.ndarray) -> np.ndarray:
    """Pixels whose 4 bilinear neighbours at x + flow in frame s all show frame t's layer there."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x2, y2 = np.floor(xs + flow[..., 0]).astype(int), np.floor(ys + flow[..., 1]).astype(int)
    ok = np.ones((h, w), bool)
    for dx in (0, 1):
        for dy in (0, 1):
            there = scene.instances[s][np.clip(y2 + dy, 0, h - 1), np.clip(x2 + dx, 0, w - 1)]
            ok &= there == scene.instances[t]
    return ok


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warp_check_on_every_pair(difficulty, seed):
    """Frame s warped by the true flow t -> s equals frame t on non-occluded pixels, up to interpolation."""
    config = replace(config_for(difficulty, 128, 160, 3), lighting=0.0, noise=0.0)
    scene = make_scene(config, np.random.default_rng(seed))
    for t, s in [(0, 1), (1, 2), (1, 0), (2, 1)]:  # forward and backward
        flow, occ = scene.flow(t, s)
        err = np.abs(warp_back(scene.frames[s], flow) - scene.frames[t]).mean(axis=2)
        zero = np.abs(scene.frames[s].astype(np.float32) - scene.frames[t]).mean(axis=2)
        visible = ~occ
        assert 0.5 < visible.mean() < 1.0  # something moves out of sight, most stays
        assert err[visible].mean() < min(1.5, 0.3 * zero[visible].mean())
        # Away from layer boundaries only resampling error remains: a tight per-pixel bound.
        inner = visible & same_layer_footprint(scene, t, s, flow)
        assert inner.mean() > 0.7
        assert err[inner].max() < 8.0 and np.percentile(err[inner], 99.9) < 3.0


def test_forward_and_backward_flow_agree():
    scene = make_scene(config_for("medium", 128, 160, 2), np.random.default_rng(5))
    fw, occ = scene.flow(0, 1)
    bw, _ = scene.flow(1, 0)
    back = warp_back(bw, fw)  # bw at x + fw(x)
    inner = ~occ & same_layer_footprint(scene, 0, 1, fw)
    assert np.abs(fw + back)[inner].max() < 0.05  # round trip returns to x


def test_lighting_and_noise_still_pass_a_looser_warp_check():
    """A brightness change breaks equality but not correlation: warped frame 2 correlates with frame 1."""
    scene = make_scene(config_for("hard", 128, 160, 2), np.random.default_rng(3))
    assert scene.config.lighting > 0 and scene.config.noise > 0
    flow, occ = scene.flow(0, 1)
    first = scene.frames[0].astype(np.float32)[~occ].ravel()

    def ncc(other: np.ndarray) -> float:
        return float(np.corrcoef(first, other[~occ].ravel())[0, 1])

    assert ncc(warp_back(scene.frames[1], flow)) > 0.97
    assert ncc(scene.frames[1].astype(np.float32)) < 0.9


def test_hand_built_translation_gives_exact_flow_and_occlusion():
    """A 30 x 40 rectangle moving 10 px right over a static background."""
    config = SceneConfig(height=60, width=90, frames=2)
    rng = np.random.default_rng(0)
    still = Motion(center=np.array([44.5, 29.5]), half=45, pos=np.array([44.5, 29.5]), vel=np.zeros(2),
                   angle=0, spin=0, scale=1, zoom=0, aspect=0, stretch=0)  # fmt: skip
    moving = replace(still, center=np.array([19.5, 14.5]), half=20, pos=np.array([30.0, 30.0]),
                     vel=np.array([10.0, 0.0]))  # fmt: skip
    shape = np.zeros((30, 40), bool)
    shape[2:28, 2:38] = True
    layers = [Layer(make_texture(rng, 60, 90), None, still, "background"),
              Layer(make_texture(rng, 30, 40), shape, moving, "rectangle")]  # fmt: skip
    scene = Scene(config, layers)
    for t in range(2):
        img, inst = scene.render(t)
        scene.frames.append(np.rint(img).astype(np.uint8))
        scene.instances.append(inst)
    on_object = scene.instances[0] == 1
    assert on_object.sum() == 26 * 36
    flow, occ = scene.flow(0, 1)
    np.testing.assert_allclose(flow[on_object], np.tile([10.0, 0.0], (on_object.sum(), 1)), atol=1e-9)
    np.testing.assert_allclose(flow[~on_object], 0.0, atol=1e-9)
    # Occluded: exactly the background that the object moves onto.
    np.testing.assert_array_equal(occ, (scene.instances[0] == 0) & (scene.instances[1] == 1))
    assert occ.sum() == 26 * 10
    # Backward: the background uncovered behind the object is occluded in frame 1 -> 0.
    _, occ_bw = scene.flow(1, 0)
    np.testing.assert_array_equal(occ_bw, (scene.instances[1] == 0) & (scene.instances[0] == 1))


def test_points_leaving_the_frame_are_occluded():
    scene = make_scene(config_for("hard", 96, 128, 2), np.random.default_rng(4))
    flow, occ = scene.flow(0, 1)
    h, w = occ.shape
    ys, xs = np.mgrid[0:h, 0:w]
    x2, y2 = xs + flow[..., 0], ys + flow[..., 1]
    outside = (x2 < 0) | (x2 > w - 1) | (y2 < 0) | (y2 > h - 1)
    assert outside.any() and occ[outside].all()


def test_deterministic_by_seed_and_instances_are_stable():
    config = config_for("medium", 64, 80, 3)
    a = make_scene(config, np.random.default_rng([7, 0]))
    b = make_scene(config, np.random.default_rng([7, 0]))
    c = make_scene(config, np.random.default_rng([8, 0]))
    for fa, fb in zip(a.frames, b.frames, strict=True):
        np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(a.flow(0, 1)[0], b.flow(0, 1)[0])
    assert not np.array_equal(a.frames[0], c.frames[0])
    assert {layer.kind for layer in a.layers[1:4]} == {"ellipse", "polygon", "rectangle"}
    for inst in a.instances:
        assert inst.dtype == np.uint16 and set(np.unique(inst)) <= set(range(len(a.layers)))
        assert 0 in inst


def test_instances_as_sam_records():
    scene = make_scene(config_for("medium", 64, 80, 2), np.random.default_rng(1))
    inst = scene.instances[1]
    records = instance_records(inst)
    assert [set(r) for r in records] == [set(RECORD_KEYS)] * len(np.unique(inst))
    assert sum(r["area"] for r in records) == 64 * 80
    for r in records:
        m = r["segmentation"]
        x, y, w, h = r["bbox"]
        ys, xs = np.nonzero(m)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())
        px, py = r["point_coords"][0]
        assert m[int(py), int(px)] and r["area"] == m.sum()


def test_synth_command_writes_a_dataset_idempotently(tmp_path):
    out = tmp_path / "syn"
    args = ["synth", "--out", str(out), "--sequences", "2", "--frames", "3", "--size", "48x64", "--seed", "3"]
    runner = CliRunner()
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "2 sequences, 6 frames, 4 pairs" in r.output
    manifest = Manifest.load(out / "manifest.json")
    assert manifest.layout == "synthetic" and manifest.meta["synth"]["seed"] == 3
    # The layout scanner finds the same frames and pairs (so a moved copy works too).
    scanned = scan("synthetic", out)
    assert scanned.frame_ids == manifest.frame_ids and scanned.pairs == manifest.pairs
    ds = open_dataset("synthetic", out)
    s = ds[1]
    assert (s["frame1"], s["frame2"]) == ("training/clean/seq_000/frame_0002.png",
                                          "training/clean/seq_000/frame_0003.png")  # fmt: skip
    assert s["img1"].shape == (48, 64, 3) and s["flow"].shape == (48, 64, 2) and s["valid"].all()
    assert s["occ"].dtype == bool and s["occ_bw"].shape == (48, 64) and s["flow_bw"].shape == (48, 64, 2)
    assert s["inst1"].dtype == np.uint16 and s["inst2"].max() >= 1
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    r = runner.invoke(main, args)  # same arguments: nothing to do
    assert r.exit_code == 0 and "up to date" in r.output
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    r = runner.invoke(main, [*args[:-1], "4"])  # other parameters: refused, nothing overwritten
    assert r.exit_code == 2 and "seed 3 -> 4" in r.output
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    # An interrupted run resumes: only the unfinished sequence is made again, identically.
    before = (out / "training/flow/seq_001/frame_0001.flo").read_bytes()
    (out / "manifest.json").unlink()
    (out / ".synth/seq_001.json").unlink()
    (out / "training/flow/seq_001/frame_0001.flo").unlink()
    r = runner.invoke(main, args)
    assert r.exit_code == 0 and "1 sequences generated now" in r.output
    assert (out / "training/flow/seq_001/frame_0001.flo").read_bytes() == before
    assert (out / "training/clean/seq_000/frame_0001.png").stat().st_mtime_ns == stamps[
        out / "training/clean/seq_000/frame_0001.png"
    ]


def test_synth_refuses_bad_arguments(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["synth", "--out", str(tmp_path / "x"), "--size", "64by80"])
    assert r.exit_code == 2 and "--size must be HEIGHTxWIDTH" in r.output
    r = runner.invoke(main, ["synth", "--out", str(tmp_path / "x"), "--size", "8x8"])
    assert r.exit_code == 2 and "too small" in r.output
