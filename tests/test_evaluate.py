"""Evaluation and inference: one evaluator for the network and the baselines, padding, metrics, commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from unsamflow.pipeline.errors import BadInputError, StoreError
from unsamflow.pipeline.flow import open_dataset, read_flow
from unsamflow.pipeline.images import write_png
from unsamflow.trainer.cli import main
from unsamflow.trainer.evaluation import (
    DISFlow,
    NetworkPredictor,
    StoreSegs,
    ZeroFlow,
    default_test_size,
    evaluate,
    infer,
)
from unsamflow.trainer.model import PWCLite

pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers --------------------------------------------------------------------------------------------
class EchoNet(nn.Module):
    """A stand-in network: returns img1's red / green channels (x 100) as the flow, and records what it saw,
    so a test knows exactly which flow the padding and cropping must give back."""

    def __init__(self, mask_features: bool = False):
        super().__init__()
        self.mask_features = nn.Identity() if mask_features else None
        self.seen: list[tuple] = []

    def forward(self, img1, img2, full_seg1=None, full_seg2=None, with_bw=True):
        self.seen.append((tuple(img1.shape), None if full_seg1 is None else full_seg1.clone()))
        return {"flows_fw": [img1[:, :2] * 100.0]}


def _checkpoint(path: Path, mask_features: bool = False) -> Path:
    from unsamflow.trainer.engine.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = PWCLite(mask_features=mask_features)
    return save_checkpoint(path, {"config": {}, "model_args": {"mask_features": mask_features},
                                  "model": model.state_dict()})  # fmt: skip


def _sample(flow, gt, valid, frame="a.png"):
    img = np.zeros((*gt.shape[:2], 3), np.uint8)
    return {"frame1": frame, "frame2": "b.png", "img1": img, "img2": img, "flow": gt, "valid": valid,
            "pred": flow}


# -- metrics through the evaluator ----------------------------------------------------------------------
def test_zero_flow_metrics_equal_hand_computed_values_on_real_sintel(shipped_data):
    ds = open_dataset("sintel-clean-training", shipped_data / "sintel", gt_only=True)
    s = ds[0]
    assert s["frame1"] == "training/clean/alley_1/frame_0002.png"
    got = evaluate(ZeroFlow(), ds, "sintel-clean-training").metrics
    mag, v, occ = np.linalg.norm(s["flow"].astype(np.float64), axis=2), s["valid"], s["occ"]
    assert got["epe"] == pytest.approx(mag[v].mean(), rel=1e-6)  # EPE of zero flow = mean GT magnitude
    assert got["epe_non_occ"] == pytest.approx(mag[v & ~occ].mean(), rel=1e-6)
    assert got["epe_occ"] == pytest.approx(mag[v & occ].mean(), rel=1e-6)
    assert got["px3"] == pytest.approx((mag[v] < 3).mean())
    assert got["flall"] == pytest.approx(100 * ((mag[v] > 3) & (mag[v] > 0.05 * mag[v])).mean())
    assert "epe_per_image" not in got  # Sintel pools pixels only


def test_dis_beats_zero_flow_on_real_sintel(shipped_data):
    ds = open_dataset("sintel-clean-training", shipped_data / "sintel", gt_only=True)
    zero, dis = (evaluate(p, ds, "sintel-clean-training").metrics["epe"] for p in (ZeroFlow(), DISFlow()))
    assert dis < 0.5 * zero


def test_kitti_flall_is_pooled_over_pixels_and_also_reported_per_image():
    # Image A: 1 valid pixel, an outlier. Image B: 3 valid pixels, none an outlier.
    gt = np.zeros((1, 4, 2), np.float32)
    gt[..., 0] = 10.0
    a = _sample(np.zeros_like(gt), gt, np.array([[True, False, False, False]]))
    b = _sample(gt.copy(), gt, np.array([[True, True, True, False]]), frame="c.png")
    b["pred"][0, 0, 0] = 10.3  # 0.3 px off: not an outlier
    data = [a, b]
    predict = iter([a["pred"], b["pred"]])
    result = evaluate(lambda *args: next(predict), data, "kitti-2015-training")
    m = result.metrics
    assert result.aggregate == "image"
    assert m["flall"] == pytest.approx(100 * 1 / 4)  # the devkit: outliers / valid pixels of all images
    assert m["flall_per_image"] == pytest.approx(100 * (1 + 0) / 2)
    assert m["epe"] == pytest.approx((10 + 0.3) / 4, rel=1e-5)
    assert m["epe_per_image"] == pytest.approx((10 + 0.3 / 3) / 2, rel=1e-5)


def test_subsets_merge_to_the_whole_for_distributed_evaluation(shipped_data):
    ds = open_dataset("sintel-clean-training", shipped_data / "sintel", gt_only=True)
    ds.pairs = ds.pairs * 3  # three pairs (the same one): enough to split
    whole = evaluate(ZeroFlow(), ds, "sintel-clean-training")
    left = evaluate(ZeroFlow(), ds, "sintel-clean-training", indices=[0, 2])
    right = evaluate(ZeroFlow(), ds, "sintel-clean-training", indices=iter([1]))  # any sampler
    merged = left.accumulators["model"].merge(right.accumulators["model"])
    assert merged.compute() == pytest.approx(whole.metrics)
    assert len(left.pairs) == 2 and len(right.pairs) == 1
    nothing = evaluate(ZeroFlow(), ds, "sintel-clean-training", indices=[])  # a rank with no share
    assert nothing.metrics == {} and nothing.pairs == []


# -- padding and resizing --------------------------------------------------------------------------------
@pytest.mark.parametrize("pad_mode", ["center", "bottom-right"])
def test_padding_round_trip_gives_the_known_flow_back_exactly_for_odd_sizes(pad_mode):
    rng = np.random.default_rng(0)
    img1 = rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)
    seg = rng.integers(0, 5, (37, 91))
    net = EchoNet(mask_features=True)
    flow = NetworkPredictor(net, pad_mode=pad_mode)(img1, img1.copy(), seg, seg)
    want = img1[..., :2].astype(np.float32) / 255 * 100
    np.testing.assert_allclose(flow, want, rtol=0, atol=1e-4)
    shape, seen_seg = net.seen[0]
    assert shape == (1, 3, 64, 128)
    top, left = (13, 18) if pad_mode == "center" else (0, 0)  # 64 - 37 = 27 rows, 128 - 91 = 37 columns
    assert torch.equal(seen_seg[0, top : top + 37, left : left + 91], torch.from_numpy(seg))
    assert torch.equal(seen_seg[0, 0, left : left + 91], torch.from_numpy(seg[0]))  # replicated border rows


def test_test_size_resizes_frames_and_rescales_the_flow_back():
    class Constant(nn.Module):
        mask_features = None

        def forward(self, img1, img2, s1=None, s2=None, with_bw=True):
            self.size = tuple(img1.shape[-2:])
            flow = torch.zeros(1, 2, *img1.shape[-2:])
            flow[:, 0], flow[:, 1] = 2.0, 1.0
            return {"flows_fw": [flow]}

    net = Constant()
    frame = np.zeros((100, 300, 3), np.uint8)
    flow = NetworkPredictor(net, test_size=(64, 128))(frame, frame)
    assert net.size == (64, 128)
    assert flow.shape == (100, 300, 2)
    np.testing.assert_allclose(flow[..., 0], 2.0 * 300 / 128, rtol=1e-6)
    np.testing.assert_allclose(flow[..., 1], 1.0 * 100 / 64, rtol=1e-6)
    assert default_test_size("sintel-final-training") == (448, 1024)
    assert default_test_size("kitti-2015-training") == (256, 832)
    assert default_test_size("synthetic") is None


# -- the real network, checkpoints and stores -------------------------------------------------------------
def test_mf_checkpoint_with_stores_and_refine_through_the_command(tiny_train_set, tmp_path):
    ckpt = _checkpoint(tmp_path / "run" / "ckpt_0000010.pt", mask_features=True)
    out, js = tmp_path / "outputs", tmp_path / "metrics.json"
    r = CliRunner().invoke(main, [
        "evaluate", "--checkpoint", str(tmp_path / "run"), "--dataset", "synthetic", "--root",
        str(tiny_train_set.root), "--masks", str(tiny_train_set.stores), "--refine",
        "--write-outputs", str(out), "--json", str(js), "--device", "cpu",
    ])
    assert r.exit_code == 0, r.output
    doc = json.loads(js.read_text())
    assert doc["checkpoint"] == str(ckpt) and doc["num_pairs"] == 6
    assert {"epe", "epe_non_occ", "epe_occ", "px1", "px3", "px5", "flall"} <= set(doc["metrics"])
    assert set(doc["refined"]) == set(doc["metrics"])
    flows = sorted((out / "flow").rglob("*.flo"))
    assert len(flows) == 6 and len(list((out / "refined").rglob("*.flo"))) == 6
    assert read_flow(flows[0])[0].shape == (64, 128, 2)
    assert len(list((out / "pictures").rglob("*.png"))) == 6
    assert "model" in r.output and "+ refine" in r.output


def test_mf_model_without_stores_fails_naming_what_is_missing(tiny_train_set, tmp_path):
    ckpt = _checkpoint(tmp_path / "mf.pt", mask_features=True)
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                                  "--root", str(tiny_train_set.root), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 2
    assert "mask features (+mf)" in r.output and "--masks" in r.output


def test_stores_that_miss_a_frame_fail_before_any_pair_runs(tiny_train_set, tmp_path):
    from conftest import write_instance_stores

    ds = open_dataset("synthetic", tiny_train_set.root, gt_only=True)
    keep = [f.id for f in ds.manifest.frames][:-1]
    stores = write_instance_stores(tiny_train_set.root, tmp_path / "stores", frames=keep)
    missing = [f.id for f in ds.manifest.frames][-1]
    with pytest.raises(StoreError, match=f"first {missing!r}"):
        evaluate(ZeroFlow(), ds, "synthetic", segs=StoreSegs(stores), write_outputs=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["missing", "junk", "folder"])
def test_bad_checkpoints_fail_naming_the_file(tmp_path, shipped_data, what):
    path = tmp_path / "model.pt"
    if what == "junk":
        path.write_bytes(b"this is not a checkpoint")
    elif what == "folder":
        path = tmp_path / "empty_run"
        path.mkdir()
    r = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(path), "--dataset", "sintel-clean-training",
                                  "--root", str(shipped_data / "sintel")])  # fmt: skip
    assert r.exit_code == 2
    assert str(path) in r.output and "Traceback" not in r.output


def test_a_dataset_without_ground_truth_is_refused(tmp_path):
    for i in range(2):
        write_png(tmp_path / "seq" / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    ds = open_dataset("folder", tmp_path, gt_only=True)
    with pytest.raises(BadInputError, match=f"'folder' at {tmp_path} has no pairs with ground-truth flow"):
        evaluate(ZeroFlow(), ds, "folder")
    r = CliRunner().invoke(main, ["evaluate", "--baseline", "zero", "--dataset", "folder", "--root",
                                  str(tmp_path)])
    assert r.exit_code == 2 and "no pairs with ground-truth flow" in r.output


# -- inference --------------------------------------------------------------------------------------------
def test_infer_writes_one_flow_and_one_picture_per_consecutive_pair(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        write_png(tmp_path / "frames" / f"frame_{i}.png", rng.integers(0, 256, (45, 67, 3), dtype=np.uint8))
    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "frames"),
                                  "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    flows = sorted((out / "flow").iterdir())
    assert [f.name for f in flows] == ["frame_0.flo", "frame_1.flo"]
    assert [f.name for f in sorted((out / "color").iterdir())] == ["frame_0.png", "frame_1.png"]
    flow, valid = read_flow(flows[0])
    assert flow.shape == (45, 67, 2) and valid.all() and np.isfinite(flow).all()
    # KITTI PNG output reads back to the same flow (within its 1/64 px quantisation).
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "frames"),
                                  "--out", str(tmp_path / "k"), "--format", "kitti-png", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    kflow, _ = read_flow(tmp_path / "k" / "flow" / "frame_0.png")
    np.testing.assert_allclose(kflow, flow, atol=1 / 64)


def test_infer_reads_a_video(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (40, 30))
    if not writer.isOpened():
        pytest.skip("OpenCV has no MJPG writer here")
    for i in range(3):
        writer.write(np.full((30, 40, 3), 60 * i, np.uint8))
    writer.release()
    result = infer(ZeroFlow(), path, tmp_path / "out")
    assert result.pairs == 2
    assert [p.name for p in result.flow_files] == ["frame_000000.flo", "frame_000001.flo"]
    assert read_flow(result.flow_files[1])[0].shape == (30, 40, 2)


def test_infer_refuses_frames_of_different_sizes_before_writing(tmp_path):
    write_png(tmp_path / "frames" / "a_0.png", np.zeros((20, 30, 3), np.uint8))
    write_png(tmp_path / "frames" / "a_1.png", np.zeros((20, 30, 3), np.uint8))
    write_png(tmp_path / "frames" / "a_2.png", np.zeros((21, 30, 3), np.uint8))
    with pytest.raises(BadInputError, match="frame 'a_2.png' is 30x21 but 'a_0.png'"):
        infer(ZeroFlow(), tmp_path / "frames", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(BadInputError, match="input not found"):
        infer(ZeroFlow(), tmp_path / "nothing", tmp_path / "out")


def test_infer_mf_model_needs_masks(tmp_path):
    for i in range(2):
        write_png(tmp_path / "frames" / f"{i}.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(BadInputError, match=r"\+mf"):
        infer(NetworkPredictor(EchoNet(mask_features=True)), tmp_path / "frames", tmp_path / "out")


# -- the demo report --------------------------------------------------------------------------------------
def test_report_puts_the_model_beside_zero_and_dis(tiny_train_set, tmp_path):
    from unsamflow.trainer.report import ReportSet, build_report, real_sample_sets

    data = tmp_path / "data"
    shutil.copytree(tiny_train_set.root, data)
    ckpt = _checkpoint(tmp_path / "run" / "ckpt_0000001.pt", mask_features=True)
    sets = [ReportSet("held out", "synthetic", data, tiny_train_set.stores)]
    path = build_report(tmp_path / "run", tmp_path / "report", sets, device="cpu", max_pairs=2, pictures=1)
    text = path.read_text()
    for row in ("| model |", "| dis |", "| zero |"):
        assert row in text
    assert "](pictures/held_out_0.png)" in text
    assert (tmp_path / "report" / "pictures" / "held_out_0.png").is_file()
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    assert doc["checkpoint"] == str(ckpt) and doc["mask_features"] is True
    assert [r["predictor"] for r in doc["sets"][0]["results"]] == ["model", "dis", "zero"]
    assert {s.name for s in real_sample_sets()} == {"sintel-clean-training", "kitti-2015-training",
                                                     "middlebury-other"}


# -- one pair with ground truth, masks by relative path, progress lines in logs ----------------------------
def test_infer_one_pair_with_ground_truth_prints_metrics(shared_data, tmp_path):
    chairs = shared_data / "flyingchairs" / "FlyingChairs_examples"
    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), str(chairs / "0000000-img0.ppm"),
                                  str(chairs / "0000000-img1.ppm"), "--gt", str(chairs / "0000000-gt.flo"),
                                  "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "epe" in r.output and "px1" in r.output
    flow, _ = read_flow(out / "flow" / "0000000-img0.flo")
    assert flow.shape == (384, 512, 2)
    from unsamflow.trainer.metrics import FlowMetrics

    gt, valid = read_flow(chairs / "0000000-gt.flo")
    epe = FlowMetrics("pixel").update(flow, gt, valid)[0]["epe"]
    assert f"{epe:.3f}" in r.output  # the printed figure is the pair's EPE
    assert (out / "color" / "0000000-img0.png").is_file() and (out / "panel" / "0000000-img0.png").is_file()
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), str(chairs / "0000000-img0.ppm"),
                                  "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "exactly two images" in r.output


def _folder_stores(root: Path, out: Path) -> Path:
    """Stores of every frame under `root` (layout folder), one mask per frame: the pipeline's format."""
    from unsamflow.pipeline.derive import DeriveConfig, derive
    from unsamflow.pipeline.images import file_sha256
    from unsamflow.pipeline.layouts import scan
    from unsamflow.pipeline.store import StoreWriter, build_index
    from unsamflow.pipeline.synthetic.scenes import instance_records

    manifest = scan("folder", root)
    cfg = DeriveConfig()
    with StoreWriter(out / "s.h5", segmenter={"name": "instances", "config": {}}, derive_config=cfg.to_dict(),
                     source={"layout": "folder", "root": manifest.root}) as w:  # fmt: skip
        for f in manifest.frames:
            inst = np.zeros((64, 64), np.uint16)
            inst[8:40, 8:40] = 1
            records = instance_records(inst)
            masks = np.stack([x["segmentation"] for x in records])
            full_seg, key = derive(masks, np.array([x["bbox"] for x in records], float), cfg)
            w.add_frame(f.id, image_shape=inst.shape, sha256=file_sha256(manifest.path(f.id)),
                        records=records, full_seg=full_seg, key_objects=key)  # fmt: skip
    build_index(out, manifest=manifest)
    return out


def test_infer_matches_masks_made_from_a_folder_above_the_input(tmp_path):
    rng = np.random.default_rng(0)
    for clip in ("judo", "walk"):
        for i in range(2):
            write_png(tmp_path / "video" / clip / f"{i:05d}.png", rng.integers(0, 256, (64, 64, 3), np.uint8))
    stores = _folder_stores(tmp_path / "video", tmp_path / "stores")
    ckpt = _checkpoint(tmp_path / "m.pt", mask_features=True)
    judo = tmp_path / "video" / "judo"
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), "--input", str(judo),
                                  "--masks", str(stores), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "flow" / "00000.flo").is_file()
    # one pair of files: each matched to the stores by its path under their root
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), str(judo / "00000.png"),
                                  str(judo / "00001.png"), "--masks", str(stores), "--out",
                                  str(tmp_path / "one"), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    write_png(tmp_path / "elsewhere" / "a.png", np.zeros((64, 64, 3), np.uint8))
    write_png(tmp_path / "elsewhere" / "b.png", np.zeros((64, 64, 3), np.uint8))
    r = CliRunner().invoke(main, ["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "elsewhere"),
                                  "--masks", str(stores), "--out", str(tmp_path / "o2"), "--device", "cpu"])
    assert r.exit_code != 0 and f"made from {(tmp_path / 'video').resolve()}" in r.output
    assert "'judo/00000.png'" in r.output


def test_evaluate_progress_is_one_line_per_report_in_a_log(shipped_data, monkeypatch):
    monkeypatch.setenv("UNSAMFLOW_PROGRESS_SECONDS", "0")
    r = CliRunner().invoke(main, ["evaluate", "--baseline", "zero", "--dataset", "sintel-clean",
                                  "--root", str(shipped_data / "sintel")])  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("evaluate ")]
    assert lines and "\r" not in r.output
    assert lines[0].startswith("evaluate 1/") and "ETA" in lines[0]


def test_report_says_which_real_samples_were_skipped(tiny_train_set, tmp_path, monkeypatch):
    """On a pip install the repository's tests/data is absent: the report says the samples were skipped
    (before: silently dropped)."""
    from unsamflow.trainer import report

    monkeypatch.setattr(report, "_REPO", tmp_path / "site-packages" / "unsamflow")
    monkeypatch.setenv("UNSAMFLOW_SHARED_DATA", str(tmp_path / "nothing"))
    _checkpoint(tmp_path / "run" / "ckpt_0000001.pt", mask_features=True)
    args = ["report", "--run", str(tmp_path / "run"), "--dataset", "synthetic", "--root",
            str(tiny_train_set.root), "--masks", str(tiny_train_set.stores), "--max-pairs", "1",
            "--pictures", "0", "--out", str(tmp_path / "rep"), "--device", "cpu"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "real samples skipped (Sintel clean (real), KITTI 2015 (real), Middlebury (real))" in r.output
    assert "UNSAMFLOW_SHARED_DATA" in r.output
    assert "real samples skipped" in (tmp_path / "rep" / "report.md").read_text()
