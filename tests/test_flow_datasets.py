"""Flow datasets on every real sample of ../shared/data, plus KITTI occlusions and the show-flow command."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.flow.datasets import DATASETS, FlowDataset, open_dataset
from unsamflow.pipeline.flow.io import read_kitti_flow, read_mask_png, write_kitti_flow
from unsamflow.pipeline.manifest import Frame, Manifest, Pair

# name, root under shared/data, options, pairs with GT, frame size (H, W) of the first GT pair
REAL = [
    ("sintel-clean-training", "sintel", {}, 3, (436, 1024)),
    ("sintel-final-training", "sintel", {}, 5, (436, 1024)),
    ("kitti-2015-training", "kitti2015", {}, 1, (375, 1242)),
    ("kitti-2012-training", "kitti2012", {}, 2, (376, 1241)),
    ("kitti-2012-training", "kitti2012", {"gray": True}, 1, (376, 1241)),
    ("middlebury-other", "middlebury", {}, 3, (388, 584)),
    ("middlebury-other", "middlebury", {"gray": True}, 8, (388, 584)),
]


def photometric_error(sample: dict, flow: np.ndarray) -> float:
    """Mean |frame1 - frame2 warped back by flow| over valid, non-occluded pixels."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = cv2.remap(sample["img2"], xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    keep = sample["valid"] & ~sample.get("occ", np.zeros((h, w), bool))
    return float(np.abs(warped.astype(np.float32) - sample["img1"])[keep].mean())


def check_sample(s: dict, shape: tuple[int, int]) -> None:
    assert s["img1"].shape == s["img2"].shape == shape + (3,) and s["img1"].dtype == np.uint8
    assert s["flow"].shape == shape + (2,) and s["flow"].dtype == np.float32
    assert s["valid"].shape == shape and s["valid"].dtype == bool
    assert np.isfinite(s["flow"]).all() and np.abs(s["flow"]).max() < 400
    # The ground truth really belongs to the pair: warping by it beats not warping by far.
    assert photometric_error(s, s["flow"]) < 0.6 * photometric_error(s, np.zeros_like(s["flow"]))


@pytest.mark.parametrize("name, sub, options, n_gt, shape", REAL)
def test_real_samples_load_with_ground_truth(shared_data, name, sub, options, n_gt, shape):
    ds = open_dataset(name, shared_data / sub, gt_only=True, **options)
    assert len(ds) == n_gt
    for i, s in enumerate(ds):
        if i == 0:
            check_sample(s, shape)
        assert s["frame1"] == ds.pairs[i].frame1
        assert (Path(ds.manifest.root) / s["frame1"]).is_file(), s["frame1"]  # the id names a real file
        assert not s["frame1"].startswith("/") and "\\" not in s["frame1"]
        if name.startswith("sintel"):
            assert s["occ"].shape == s["valid"].shape and 0.01 < s["occ"].mean() < 0.35
        else:
            assert "occ" not in s  # these KITTI files are flow_noc only; Middlebury has none


def test_kitti_valid_fraction_and_every_pair(shared_data):
    fractions = [s["valid"].mean() for s in open_dataset("kitti-2012-training", shared_data / "kitti2012")]
    assert fractions == pytest.approx([0.224, 0.257], abs=0.001)
    for s in open_dataset("middlebury-other", shared_data / "middlebury", gray=True):
        assert s["img1"].shape[:2] == s["flow"].shape[:2]


def test_sintel_invalid_pixels_are_not_valid(shared_data):
    ds = open_dataset("sintel-clean-training", shared_data / "sintel", gt_only=True)
    s = ds[ds.index_of("training/clean/market_5/frame_0002.png")]
    invalid = read_mask_png(shared_data / "sintel/training/invalid/market_5/frame_0002.png")
    np.testing.assert_array_equal(s["valid"], ~invalid)
    assert 1 - s["valid"].mean() == pytest.approx(0.0009, abs=0.0001)  # PROVENANCE: 0.09 %
    assert s["frame2"] == "training/clean/market_5/frame_0003.png"


def test_flyingchairs_from_a_constructed_manifest(shared_data):
    root = shared_data / "flyingchairs"
    d = "FlyingChairs_examples/0000000"
    frames = [Frame(f"{d}-img0.ppm", "chairs"), Frame(f"{d}-img1.ppm", "chairs")]
    m = Manifest("flyingchairs", str(root), frames, [Pair(frames[0].id, frames[1].id, flow=f"{d}-gt.flo")])
    s = FlowDataset(m)[0]
    check_sample(s, (384, 512))
    u, v = s["flow"][..., 0], s["flow"][..., 1]
    assert (u.min(), u.max(), v.min(), v.max()) == pytest.approx((-75.7, 38.0, -28.7, 29.1), abs=0.06)


def test_folder_of_video_frames_has_pairs_without_gt(shared_data):
    ds = open_dataset("folder", shared_data / "video")
    assert len(ds) == 2 + 9
    s = ds[ds.index_of("judo/00003.jpg")]
    assert s["frame2"] == "judo/00004.jpg" and s["img1"].shape == (480, 854, 3)
    assert "flow" not in s and "valid" not in s
    assert len(open_dataset("folder", shared_data / "video", gt_only=True)) == 0


def test_kitti_occlusions_from_flow_occ_and_flow_noc(shared_data, tmp_path):
    src = shared_data / "kitti2015/training"
    dst = tmp_path / "training"
    shutil.copytree(src / "image_2", dst / "image_2")
    shutil.copytree(src / "flow_noc", dst / "flow_noc")
    noc, valid_noc = read_kitti_flow(src / "flow_noc/000000_10.png")
    # A flow_occ that is valid on 1000 more pixels (those become "occluded").
    extra = np.zeros_like(valid_noc)
    extra.flat[np.flatnonzero(~valid_noc)[:1000]] = True
    write_kitti_flow(dst / "flow_occ/000000_10.png", noc, valid_noc | extra)
    s = open_dataset("kitti-2015-training", tmp_path)[0]
    assert s["valid"].sum() == valid_noc.sum() + 1000
    np.testing.assert_array_equal(s["occ"], extra)


def test_bad_pairs_are_reported_by_name(shared_data, tmp_path):
    root = shared_data / "sintel"
    a = "training/clean/alley_1/frame_0002.png"
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((10, 12, 3), np.uint8))
    mixed = Manifest("x", str(tmp_path), [], [Pair("small.png", "small.png", flow="nope.flo")])
    with pytest.raises(BadInputError, match="nope.flo"):
        FlowDataset(mixed)[0]
    shutil.copy(root / "training/flow/cave_2/frame_0002.flo", tmp_path / "f.flo")
    with pytest.raises(BadInputError, match=r"f.flo: flow is 436x1024 \(HxW\), frames are 10x12"):
        FlowDataset(Manifest("x", str(tmp_path), [], [Pair("small.png", "small.png", flow="f.flo")]))[0]
    shutil.copy(root / a, tmp_path / "big.png")
    with pytest.raises(BadFrameError, match="differs"):
        FlowDataset(Manifest("x", str(tmp_path), [], [Pair("big.png", "small.png")]))[0]
    with pytest.raises(BadInputError, match="escapes"):
        FlowDataset(Manifest("x", str(tmp_path), [], [Pair("../x.png", "small.png")]))[0]
    with pytest.raises(BadInputError, match="unknown dataset 'sintel-cleaned'"):
        open_dataset("sintel-cleaned", root)
    assert {"sintel-clean-training", "kitti-2015-training", "middlebury-other", "synthetic"} <= set(DATASETS)


def test_show_flow_command(shared_data, tmp_path):
    runner = CliRunner()
    out = tmp_path / "k.png"
    r = runner.invoke(main, ["show-flow", "--layout", "kitti2015", "--root", str(shared_data / "kitti2015"),
                             "--out", str(out), "--max-flow", "50"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # titles (28 px) over the tiles, a legend row (4 + 48 px: colour wheel with its px scale) below
    assert cv2.imread(str(out)).shape == (28 + 375 + 4 + 48, 3 * 1242 + 2 * 4, 3)
    pred = tmp_path / "pred.flo"
    shutil.copy(shared_data / "sintel/training/flow/cave_2/frame_0002.flo", pred)
    r = runner.invoke(main, ["show-flow", "--layout", "sintel", "--root", str(shared_data / "sintel"),
                             "--frame", "training/final/cave_2/frame_0002.png", "-l", "passes=final",
                             "--flow", str(pred), "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert cv2.imread(str(out)).shape == (28 + 436 + 4 + 48, 5 * 1024 + 4 * 4, 3)
    assert "EPE 0.000 px, Fl-all 0.00 %" in r.output  # the prediction is the ground truth
    r = runner.invoke(main, ["show-flow", "--layout", "kitti2015", "--root", str(shared_data / "kitti2015"),
                             "--pair", "7", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "--pair 7 is out of range" in r.output
