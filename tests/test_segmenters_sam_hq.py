"""`sam-hq` backend: a tiny random HQ-SAM built from segment-anything-hq's own classes, run through its
real automatic mask generator on a real frame, in-process and on a Dask cluster; checkpoint checks.

No weights can be downloaded, so the model is the `smoke` type (random weights, meaningless masks): the
tests check the wiring, the record contract and the checks, not mask quality. Tests that need the
optional package skip, naming the extra, where it is not importable.
"""

from __future__ import annotations

import importlib
import json
import sys

import cv2
import pytest
import torch
from test_segment import small_frames
from test_segmenters import assert_valid_records
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.segmenters import SegmenterSpec, build_segmenter, check_spec


def _missing(module: str) -> str:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return str(exc)
    return ""


_WHY = _missing("segment_anything_hq")
needs_sam_hq = pytest.mark.skipif(
    bool(_WHY),
    reason=f"optional package segment-anything-hq not importable ({_WHY}): pip install 'unsamflow[sam-hq]'",
)

# Random weights: keep every mask (no quality filter, no NMS) so that the records are many and varied.
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture(scope="module")
def smoke_ckpt(tmp_path_factory):
    from unsamflow.pipeline.segmenters.sam_hq import write_smoke_sam_hq_checkpoint

    return write_smoke_sam_hq_checkpoint(tmp_path_factory.mktemp("sam_hq") / "smoke.pth", seed=0)


def _fake_checkpoint(path, model_type: str, drop: str = "") -> None:
    """Exactly the keys and shapes of a model type, each tensor a 1-element storage broadcast to its
    shape (a 2.5 GB layout costs a few kB): enough for the checks, which read keys and shapes only."""
    from unsamflow.pipeline.segmenters.sam_hq import _expected_shapes

    kept = {k: s for k, s in _expected_shapes(model_type).items() if not (drop and k.startswith(drop))}
    torch.save({k: torch.zeros(()).expand(s) for k, s in kept.items()}, path)


def test_a_missing_sam_hq_package_names_the_extra(monkeypatch, tmp_path):
    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "segment_anything_hq", None)  # import raises ImportError
    with pytest.raises(BadInputError, match=r"segmenter 'sam-hq' needs the 'segment_anything_hq' package .*"
                                            r"pip install 'unsamflow\[sam-hq\]'") as info:
        check_spec(SegmenterSpec("sam-hq", {"checkpoint": str(ckpt), "model_type": "vit_b"}))
    assert "\n" not in str(info.value)


@needs_sam_hq
def test_smoke_sam_hq_runs_the_real_generator_on_a_real_frame(shared_data, smoke_ckpt):
    from unsamflow.pipeline.segmenters.sam_hq import build_sam_hq_model

    state = torch.load(smoke_ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("mask_decoder.hf_token") for k in state)  # HQ's own output token
    assert build_sam_hq_model("smoke").training is False

    image = read_rgb(shared_data / "video/judo/00000.jpg")[0]
    image = cv2.resize(image, (160, 120), interpolation=cv2.INTER_AREA)
    seg = build_segmenter(SegmenterSpec("sam-hq", {"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                                   "points_per_side": 3, **KEEP_ALL}))
    assert seg.name == "sam-hq" and "segment-anything-hq/0.3" in seg.version
    cfg = seg.config()
    json.dumps(cfg)
    assert cfg["model_type"] == "smoke" and cfg["points_per_side"] == 3 and "device" not in cfg
    assert cfg["multimask_output"] is True and cfg["pred_iou_thresh"] == 0.0
    assert seg.peak_bytes((120, 160)) == 8 * 64 * 120 * 160  # one candidate per point

    records = seg(image)
    assert 5 <= len(records) <= 9  # 9 points, one (SAM + HQ) mask each, minus empty masks
    assert_valid_records(records, (120, 160))
    assert len({r["area"] for r in records}) > 3
    grid = {(x, y) for x in (160 / 6, 80.0, 160 * 5 / 6) for y in (20.0, 60.0, 100.0)}
    for r in records:  # prompts of the 3 x 3 grid
        x, y = r["point_coords"][0]
        assert min(abs(x - gx) + abs(y - gy) for gx, gy in grid) < 1e-4


@needs_sam_hq
def test_smoke_sam_hq_on_the_cluster(shared_data, smoke_ckpt, tmp_path):
    from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
    from unsamflow.pipeline.derive import DeriveConfig
    from unsamflow.pipeline.dispatch import segment_shards
    from unsamflow.pipeline.manifest import Frame, Manifest
    from unsamflow.pipeline.store import MaskStore

    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=1, scale=0.15)
    manifest = Manifest("folder", str(tmp_path / "data"), [Frame(f"judo/{frames[0].name}", "judo")],
                        meta={"shard": 0, "num_shards": 1})
    shard = manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    spec = SegmenterSpec("sam-hq", {"checkpoint": str(smoke_ckpt), "model_type": "smoke",
                                    "points_per_side": 2, "multimask_output": False, **KEEP_ALL})
    with open_cluster(ClusterConfig(workers=1, dashboard=None)) as client:
        res = segment_shards([shard], tmp_path / "stores", spec, DeriveConfig().to_dict(), client,
                             progress=False)
    assert res.written == 1 and not res.failed and not res.bad, res.summary()
    ms = MaskStore(tmp_path / "stores" / "shard-00000-of-00001.h5")
    try:
        assert ms.segmenter["name"] == "sam-hq"
        assert ms.segmenter["config"]["multimask_output"] is False
        fm = ms.read(0)
        assert 1 <= fm.masks.shape[0] == res.masks <= 4
        assert fm.masks.dtype == bool and fm.masks.shape[1:] == cv2.imread(str(frames[0])).shape[:2]
    finally:
        ms.close()


@needs_sam_hq
def test_bad_sam_hq_checkpoints_are_named(tmp_path, smoke_ckpt):
    from unsamflow.pipeline.segmenters.sam_hq import SamHqSegmenter, load_sam_hq_state_dict

    missing = tmp_path / "nope.pth"
    with pytest.raises(BadInputError, match=f"sam-hq checkpoint not found: {missing}"):
        SamHqSegmenter(missing, model_type="vit_b")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(BadInputError, match=f"sam-hq checkpoint {text}: not loadable as a vit_h checkpoint"):
        SamHqSegmenter(text)
    with pytest.raises(BadInputError, match=r"not a vit_b checkpoint .*it is a smoke checkpoint"):
        check_spec(SegmenterSpec("sam-hq", {"checkpoint": str(smoke_ckpt), "model_type": "vit_b"}))
    with pytest.raises(BadInputError, match="unknown model_type 'vit_x'"):
        SamHqSegmenter(smoke_ckpt, model_type="vit_x")

    # The real layouts, by keys and shapes: a vit_l file given as vit_b; an original SAM file (no HQ
    # decoder) is told apart from a broken one.
    vit_l = tmp_path / "sam_hq_vit_l.pth"
    _fake_checkpoint(vit_l, "vit_l")
    load_sam_hq_state_dict(vit_l, "vit_l", mmap=True)
    with pytest.raises(BadInputError, match=r"not a vit_b checkpoint .*; it is a vit_l checkpoint"):
        load_sam_hq_state_dict(vit_l, "vit_b", mmap=True)
    plain = tmp_path / "sam_vit_b.pth"
    _fake_checkpoint(plain, "vit_b", drop="mask_decoder.hf_")
    with pytest.raises(BadInputError, match=r"no HQ-SAM decoder .*SAM checkpoint\? use --segmenter sam"):
        load_sam_hq_state_dict(plain, "vit_b", mmap=True)
    # Light HQ-SAM: the TinyViT's ImageNet head is never run, so a file may leave it out.
    light = tmp_path / "sam_hq_vit_tiny.pth"
    _fake_checkpoint(light, "vit_tiny", drop="image_encoder.head.")
    load_sam_hq_state_dict(light, "vit_tiny", mmap=True)
