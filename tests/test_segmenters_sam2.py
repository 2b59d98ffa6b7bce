"""`sam2` backend: a tiny random SAM 2 built from the package's own config and classes, run through the
real SAM2AutomaticMaskGenerator on a real frame, in-process and on a Dask cluster; checkpoint checks.

No weights can be downloaded, so the model is the `smoke` type (random weights, meaningless masks): the
tests check the wiring, the record contract and the checks, not mask quality. Tests that need the
optional `sam2` package skip, naming the extra, where it is not installed.
"""

from __future__ import annotations

import importlib
import json
import sys

import cv2
import numpy as np
import pytest
import torch
from test_segment import small_frames
from test_segmenters import assert_valid_records
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.segmenters import SegmenterSpec, available_segmenters, build_segmenter, check_spec


def _missing(module: str) -> str:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return str(exc)
    return ""


_WHY = _missing("sam2")
needs_sam2 = pytest.mark.skipif(
    bool(_WHY), reason=f"optional package sam2 not importable ({_WHY}): pip install 'unsamflow[sam2]'"
)

# Random weights: keep every mask (no quality filter, no NMS) so that the records are many and varied.
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    from unsamflow.pipeline.segmenters.sam2 import write_smoke_sam2_checkpoint

    return write_smoke_sam2_checkpoint(tmp_path_factory.mktemp("sam2") / "smoke.pt", seed=0)


def _fake_checkpoint(path, model_type: str, release: str, drop: str = "") -> None:
    """A file with exactly the keys and shapes of a real release, each tensor a 1-element storage
    broadcast to its shape (so a 224M-parameter layout costs a few kB): enough for the checks."""
    from unsamflow.pipeline.segmenters.sam2 import _expected_shapes, _label

    shapes = _expected_shapes(_label(model_type, release))
    kept = {k: s for k, s in shapes.items() if not (drop and drop in k)}
    torch.save({"model": {k: torch.zeros(()).expand(s) for k, s in kept.items()}}, path)


def test_sam2_is_listed_and_a_missing_package_names_the_extra(monkeypatch, tmp_path):
    assert available_segmenters()[:4] == ["graph", "sam", "sam2", "sam-hq"]
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "sam2", None)  # as if not installed: import raises ImportError
    with pytest.raises(BadInputError, match=r"segmenter 'sam2' needs the 'sam2' package .*"
                                            r"pip install 'unsamflow\[sam2\]'") as info:
        check_spec(SegmenterSpec("sam2", {"checkpoint": str(ckpt), "model_type": "tiny"}))
    assert "\n" not in str(info.value)


@needs_sam2
def test_smoke_sam2_runs_the_real_generator_on_a_real_frame(shared_data, smoke_ckpt):
    from unsamflow.pipeline.segmenters.sam2 import build_sam2_model

    state = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)["model"]
    assert 5_000_000 < sum(v.numel() for v in state.values()) < 9_000_000
    assert build_sam2_model("smoke").training is False

    image = read_rgb(shared_data / "video/judo/00000.jpg")[0]
    image = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    seg = build_segmenter(SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                                 "points_per_side": 3, **KEEP_ALL}))
    assert seg.name == "sam2" and "sam2/1.1" in seg.version
    cfg = seg.config()
    json.dumps(cfg)
    assert cfg["model_type"] == "smoke" and cfg["release"] == "2.1" and "device" not in cfg
    assert cfg["points_per_side"] == 3 and cfg["use_m2m"] is False and cfg["pred_iou_thresh"] == 0.0
    assert seg.peak_bytes((120, 160)) == 8 * 64 * 3 * 120 * 160

    records = seg(image)
    assert 10 <= len(records) <= 27  # 9 points x 3 masks each, minus empty masks
    assert_valid_records(records, (120, 160))
    assert len({r["area"] for r in records}) > 3
    grid = {(x, y) for x in (160 / 6, 80.0, 160 * 5 / 6) for y in (20.0, 60.0, 100.0)}
    for r in records:  # prompts of the 3 x 3 grid (SAM 2 passes them through float32)
        x, y = r["point_coords"][0]
        assert min(abs(x - gx) + abs(y - gy) for gx, gy in grid) < 1e-4


@needs_sam2
def test_smoke_sam2_on_the_cluster(shared_data, smoke_ckpt, tmp_path):
    from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
    from unsamflow.pipeline.derive import DeriveConfig
    from unsamflow.pipeline.dispatch import segment_shards
    from unsamflow.pipeline.manifest import Frame, Manifest
    from unsamflow.pipeline.store import MaskStore

    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=1, scale=0.15)
    manifest = Manifest("folder", str(tmp_path / "data"), [Frame(f"judo/{frames[0].name}", "judo")],
                        meta={"shard": 0, "num_shards": 1})
    shard = manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    spec = SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                  "points_per_side": 2, "multimask_output": False, **KEEP_ALL})
    with open_cluster(ClusterConfig(workers=1, dashboard=None)) as client:
        res = segment_shards([shard], tmp_path / "stores", spec, DeriveConfig().to_dict(), client,
                             progress=False)
    assert res.written == 1 and not res.failed and not res.bad, res.summary()
    ms = MaskStore(tmp_path / "stores" / "shard-00000-of-00001.h5")
    try:
        assert ms.segmenter["name"] == "sam2"
        assert ms.segmenter["config"]["model_type"] == "smoke"
        assert ms.segmenter["config"]["multimask_output"] is False
        fm = ms.read(0)
        assert 1 <= fm.masks.shape[0] == res.masks <= 4  # 4 points, one mask each
        assert fm.masks.dtype == bool and fm.masks.shape[1:] == cv2.imread(str(frames[0])).shape[:2]
    finally:
        ms.close()


@needs_sam2
def test_bad_sam2_checkpoints_are_named(tmp_path, smoke_ckpt):
    from unsamflow.pipeline.segmenters.sam2 import Sam2Segmenter, load_sam2_state_dict

    missing = tmp_path / "nope.pt"
    with pytest.raises(BadInputError, match=f"sam2 checkpoint not found: {missing}"):
        Sam2Segmenter(missing, model_type="tiny")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(BadInputError, match=f"sam2 checkpoint {text}: not loadable as a sam2.1 large"):
        Sam2Segmenter(text)
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 3}, meta)
    with pytest.raises(BadInputError, match=r"not a sam2.1 large checkpoint .*\{'model': state_dict\}"):
        Sam2Segmenter(meta)
    with pytest.raises(BadInputError, match=r"not a sam2.1 tiny checkpoint .*it is a sam2 smoke checkpoint "
                                            r"\(model_type='smoke', release='2.1'\)"):
        check_spec(SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "model_type": "tiny"}))
    with pytest.raises(BadInputError, match="unknown model_type 'huge'; choose one of tiny, small, base"):
        Sam2Segmenter(smoke_ckpt, model_type="huge")
    with pytest.raises(BadInputError, match="unknown release '3'"):
        Sam2Segmenter(smoke_ckpt, model_type="tiny", release="3")

    # Release 2 and 2.1 differ by a few keys: the message says which release a file is.
    old_tiny = tmp_path / "sam2_hiera_tiny.pt"
    _fake_checkpoint(old_tiny, "tiny", "2")
    assert old_tiny.stat().st_size < 2_000_000
    load_sam2_state_dict(old_tiny, "tiny", "2", mmap=True)
    with pytest.raises(BadInputError, match=r"not a sam2.1 tiny checkpoint \(.*missing keys.*\); it is a "
                                            r"sam2 tiny checkpoint \(model_type='tiny', release='2'\)"):
        load_sam2_state_dict(old_tiny, "tiny", "2.1", mmap=True)
    cut = tmp_path / "cut.pt"
    _fake_checkpoint(cut, "small", "2.1", drop="sam_mask_decoder.iou_prediction_head")
    with pytest.raises(BadInputError, match="missing keys.*it matches no SAM 2 model type"):
        load_sam2_state_dict(cut, "small", "2.1", mmap=True)


@needs_sam2
def test_sam2_options_are_checked_before_any_cluster(smoke_ckpt):
    with pytest.raises(BadInputError, match=r"segmenter 'sam2': bad options \[.*'use_mm'\]"):
        check_spec(SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "use_mm": True}))
    with pytest.raises(BadInputError, match="option use_m2m must be true or false"):
        check_spec(SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "use_m2m": "yes"}))
    with pytest.raises(BadInputError, match="uint8 RGB"):
        build_segmenter(SegmenterSpec("sam2", {"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                               "points_per_side": 1}))(np.zeros((8, 8), np.uint8))


@needs_sam2
def test_sam2_linker_tracks_a_real_frame_pair(shared_data, smoke_ckpt, tmp_path):
    """`--linker sam2`: SAM 2's video predictor (the tiny random model) carries frame 1's masks of a real
    judo pair (graph masks) to frame 2; tracks are written and verify passes. With random weights the
    carried masks are meaningless, so the ids are checked for consistency, not for quality. (In this
    process: `run --linker sam2` on a Dask worker is the same code, and a worker importing torch costs
    the test half a minute.)"""
    from click.testing import CliRunner
    from unsamflow.pipeline.cli import main
    from unsamflow.pipeline.linker import TrackConfig
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.tracks import read_mask_tracks, track_config
    from unsamflow.pipeline.track import run_track
    from unsamflow.pipeline.verify import verify

    root = tmp_path / "pair"
    root.mkdir()
    for name in ("00000.jpg", "00001.jpg"):
        image = cv2.imread(str(shared_data / "video/judo" / name))
        cv2.imwrite(str(root / name), cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--layout", "folder", "--root", str(root), "--out", str(out),
                                    "--shards", "1", "--workers", "1", "--no-dashboard", "--pictures", "0",
                                    "-o", "scales=[2700]", "--no-track", "-q"])  # few masks: SAM 2 on CPU
                                    # takes ~1 s per carried mask
    assert res.exit_code == 0, res.output
    manifest = Manifest.load(out / "manifest.json")
    cfg = TrackConfig(linker="sam2", options={"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                              "device": "cpu"})
    res = run_track(out / "stores", manifest, cfg, None, progress=False)
    assert res.written == 1 and not res.failed, res.summary()
    assert verify(out / "stores", manifest, check_hashes=False, progress=False).ok
    with MaskStore(next((out / "stores").glob("*.h5"))) as s:
        assert track_config(s)["linker"] == "sam2"
        first, second = (read_mask_tracks(s, fid) for fid in s.frame_ids)
        assert len(first) and len(second)
        assert len(set(first)) == len(first) and len(set(second)) == len(second)
        assert set(first) | set(second) <= set(range(len(first) + len(second)))


def test_sam2_linker_without_a_checkpoint_is_one_line(tmp_path):
    from unsamflow.pipeline.linker import TrackConfig
    from unsamflow.pipeline.track import make_carry

    with pytest.raises(BadInputError, match="--linker sam2 needs its checkpoint: -f checkpoint=PATH"):
        make_carry(TrackConfig(linker="sam2"))


def test_checkpoint_shapes_are_read_where_cuda_is_available(monkeypatch):
    """SAM 2's RoPE attention moves its table with .to("cuda") when CUDA is available; building the model
    on the meta device for its shapes must not try to copy that table (an H200 failed exactly there)."""
    from unsamflow.pipeline.segmenters import sam2 as sam2_backend

    want = sam2_backend._expected_shapes.__wrapped__("sam2 smoke")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sam2_backend._expected_shapes.__wrapped__("sam2 smoke") == want
