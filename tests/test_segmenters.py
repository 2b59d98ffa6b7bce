"""Segmenters: the registry (built-ins, entry points, module:factory), `graph` and `sam` on real frames."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.segmenters import (
    DEFAULT_SEGMENTER,
    ENTRY_POINT_GROUP,
    RECORD_KEYS,
    Segmenter,
    SegmenterSpec,
    available_segmenters,
    build_segmenter,
)
from unsamflow.pipeline.segmenters.base import check_records

# A third-party segmenter as a plug-in author would write it: one mask per grey level band.
PLUGIN_SOURCE = textwrap.dedent(
    """
    import numpy as np

    class BandSegmenter:
        name = "bands"
        version = "bands/1"

        def __init__(self, bands=2):
            self.bands = bands

        def config(self):
            return {"bands": self.bands}

        def __call__(self, image):
            grey = image.mean(axis=2)
            edges = np.linspace(0, 256, self.bands + 1)
            H, W = grey.shape
            out = []
            for lo, hi in zip(edges[:-1], edges[1:]):
                m = (grey >= lo) & (grey < hi)
                if not m.any():
                    continue
                ys, xs = np.nonzero(m)
                out.append({
                    "segmentation": m, "area": int(m.sum()),
                    "bbox": [int(v) for v in (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())],
                    "predicted_iou": 1.0, "stability_score": 1.0,
                    "point_coords": [[float(xs[0]), float(ys[0])]], "crop_box": [0, 0, W, H],
                })
            return out

    def build(bands=2):
        return BandSegmenter(bands)

    def not_a_segmenter():
        return object()
    """
)


def assert_valid_records(records: list[dict], shape: tuple[int, int]) -> None:
    """SAM record format, with every derived field consistent with the mask itself."""
    check_records(records, shape, "under test")
    H, W = shape
    for r in records:
        assert set(r) == set(RECORD_KEYS)
        m = r["segmentation"]
        assert isinstance(m, np.ndarray) and m.dtype == bool and m.shape == shape
        assert type(r["area"]) is int and r["area"] == m.sum() > 0
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert all(type(v) is int for v in r["bbox"] + r["crop_box"])
        assert type(r["predicted_iou"]) is float and type(r["stability_score"]) is float
        assert len(r["point_coords"]) == 1 and all(type(v) is float for v in r["point_coords"][0])
        x, y = r["point_coords"][0]
        assert 0 <= x <= W and 0 <= y <= H
        assert r["crop_box"] == [0, 0, W, H]


@pytest.fixture(scope="module")
def sintel_frame(shared_data) -> np.ndarray:
    return read_rgb(shared_data / "sintel/training/clean/alley_1/frame_0002.png")[0]


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A plug-in module on sys.path and an installed distribution that registers it as an entry point."""
    (tmp_path / "unsamflow_test_plugin.py").write_text(PLUGIN_SOURCE)
    dist = tmp_path / "unsamflow_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: unsamflow-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbands = unsamflow_test_plugin:build\nbroken = no_such_module_xyz:build\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    sys.modules.pop("unsamflow_test_plugin", None)


# ---------------------------------------------------------------- registry


def test_builtins_and_default():
    names = available_segmenters()
    assert names[:2] == ["graph", "sam"]
    assert DEFAULT_SEGMENTER == "graph"
    seg = build_segmenter(SegmenterSpec(DEFAULT_SEGMENTER, {"scales": [50, 200]}))
    assert isinstance(seg, Segmenter) and seg.name == "graph"
    assert seg.config()["scales"] == [50.0, 200.0]


def test_unknown_name_and_bad_options_are_user_errors():
    with pytest.raises(BadInputError, match=r"unknown segmenter 'samm'; available: graph, sam"):
        build_segmenter(SegmenterSpec("samm"))
    with pytest.raises(BadInputError, match=r"segmenter 'graph': bad options \['scale'\].*accepts.*'scales'"):
        build_segmenter(SegmenterSpec("graph", {"scale": 3}))
    with pytest.raises(BadInputError, match="strictly increasing"):
        build_segmenter(SegmenterSpec("graph", {"scales": [300, 100]}))
    with pytest.raises(BadInputError, match="cannot import module 'no_such_module_xyz'"):
        build_segmenter(SegmenterSpec("no_such_module_xyz:build"))


def test_entry_point_and_module_factory_plugins(plugin_dir):
    assert "bands" in available_segmenters()
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, 5:] = 200
    for name in ("bands", "unsamflow_test_plugin:build"):
        seg = build_segmenter(SegmenterSpec(name, {"bands": 2}))
        assert seg.name == "bands" and seg.config() == {"bands": 2}
        records = seg(image)
        assert [r["area"] for r in records] == [40, 40]
        assert_valid_records(records, (8, 10))
    with pytest.raises(BadInputError, match="cannot load entry point 'no_such_module_xyz:build'"):
        build_segmenter(SegmenterSpec("broken"))
    with pytest.raises(BadInputError, match="lacks the Segmenter contract"):
        build_segmenter(SegmenterSpec("unsamflow_test_plugin:not_a_segmenter"))
    with pytest.raises(BadInputError, match="has no attribute 'nope'"):
        build_segmenter(SegmenterSpec("unsamflow_test_plugin:nope"))


def test_check_records_names_the_problem():
    good = {
        "segmentation": np.ones((2, 2), bool),
        "area": 4,
        "bbox": [0, 0, 1, 1],
        "predicted_iou": 1.0,
        "stability_score": 1.0,
        "point_coords": [[0.0, 0.0]],
        "crop_box": [0, 0, 2, 2],
    }
    check_records([good], (2, 2), "x")
    with pytest.raises(BadInputError, match="record 0 area 3 but 4 pixels"):
        check_records([{**good, "area": 3}], (2, 2), "x")
    with pytest.raises(BadInputError, match=r"record 1 lacks keys \['crop_box'\]"):
        check_records([good, {k: v for k, v in good.items() if k != "crop_box"}], (2, 2), "x")
    with pytest.raises(BadInputError, match="bool array of shape"):
        check_records([good], (3, 2), "x")


# ---------------------------------------------------------------- graph


def test_graph_records_on_a_real_frame(sintel_frame):
    seg = build_segmenter(SegmenterSpec("graph"))
    records = seg(sintel_frame)
    assert_valid_records(records, sintel_frame.shape[:2])
    assert 30 <= len(records) <= 400
    assert all(r["area"] >= seg.min_area for r in records)
    assert all(0.0 < r["predicted_iou"] <= 1.0 and 0.0 < r["stability_score"] <= 1.0 for r in records)
    json.dumps(seg.config())
    assert importlib.metadata.version("scikit-image") in seg.version

    # Masks at several scales: they overlap, and where they do, the smaller lies inside the larger.
    # (Checked on every 4th row and column: nested sets stay nested when subsampled, and it is 16x cheaper.)
    masks = np.stack([r["segmentation"][::4, ::4] for r in records]).reshape(len(records), -1)
    masks = masks.astype(np.float32)
    inter = masks @ masks.T
    areas = np.diag(inter)
    overlapping = (inter > 0) & ~np.eye(len(records), dtype=bool)
    assert (overlapping.sum(axis=1) >= 2).mean() > 0.5  # most masks overlap at least two others
    smaller = np.minimum(areas[:, None], areas[None, :])
    np.testing.assert_array_equal(inter[overlapping], smaller[overlapping])  # strict nesting
    assert len(set(areas.tolist())) > 10  # many sizes

    # Deterministic: a second call (and a second instance) gives the same records.
    again = build_segmenter(SegmenterSpec("graph"))(sintel_frame)
    assert len(again) == len(records)
    for a, b in zip(records, again, strict=True):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert {k: v for k, v in a.items() if k != "segmentation"} == {
            k: v for k, v in b.items() if k != "segmentation"
        }


def test_graph_small_and_odd_inputs():
    seg = build_segmenter(SegmenterSpec("graph", {"min_area": 4, "sigma": 0.0}))  # no blur: a crisp edge
    flat = np.full((20, 30, 3), 90, np.uint8)
    assert seg(flat) == []  # one region = the whole frame, which is not a mask
    two = flat.copy()
    two[:, 15:] = 250
    records = seg(two)
    assert_valid_records(records, (20, 30))
    assert sorted(r["area"] for r in records) == [300, 300]
    with pytest.raises(BadInputError, match="uint8 RGB"):
        seg(np.zeros((20, 30), np.uint8))


# ---------------------------------------------------------------- sam


def test_tiny_sam_runs_the_real_generator_on_a_real_frame(shared_data, tmp_path):
    from unsamflow.pipeline.segmenters.sam import build_sam_model, write_tiny_sam_checkpoint

    ckpt = write_tiny_sam_checkpoint(tmp_path / "tiny.pth", seed=0)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 2_500_000 < sum(v.numel() for k, v in state.items() if "pos_embed" not in k) < 4_000_000
    again = torch.load(write_tiny_sam_checkpoint(tmp_path / "again.pth", seed=0), weights_only=True)
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    assert build_sam_model("vit_tiny").training is False

    image = read_rgb(shared_data / "video/judo/00000.jpg")[0]
    image = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    # Random weights: keep every mask (no quality filter, no NMS) so the records are many and varied.
    options = {
        "checkpoint": str(ckpt),
        "model_type": "vit_tiny",
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    seg = build_segmenter(SegmenterSpec("sam", options))
    assert seg.name == "sam" and "segment-anything/1.0" in seg.version
    cfg = seg.config()
    json.dumps(cfg)
    assert cfg["model_type"] == "vit_tiny" and cfg["points_per_side"] == 4 and "device" not in cfg
    assert cfg["min_mask_region_area"] == 0 and cfg["crop_n_layers"] == 0  # segment-anything's defaults
    assert seg.model.training is False

    records = seg(image)
    assert 10 <= len(records) <= 48  # 16 points x 3 masks each, minus empty masks
    assert_valid_records(records, (240, 320))
    assert len({r["area"] for r in records}) > 5
    grid = {(x, y) for x in (40.0, 120.0, 200.0, 280.0) for y in (30.0, 90.0, 150.0, 210.0)}
    assert {tuple(r["point_coords"][0]) for r in records} <= grid  # prompts of the 4 x 4 grid


def test_bad_sam_checkpoints_are_named(tmp_path):
    from unsamflow.pipeline.segmenters.sam import SamSegmenter, write_tiny_sam_checkpoint

    missing = tmp_path / "nope.pth"
    with pytest.raises(BadInputError, match=f"sam checkpoint not found: {missing}"):
        SamSegmenter(missing, model_type="vit_b")
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(BadInputError, match=f"sam checkpoint {text}: not loadable as a vit_h checkpoint"):
        SamSegmenter(text)
    not_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(BadInputError, match=f"{not_tensors}: not a vit_h checkpoint .*dict of tensors"):
        SamSegmenter(not_tensors)
    tiny = write_tiny_sam_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(BadInputError, match=f"{tiny}: not a vit_b checkpoint .*it is a vit_tiny checkpoint"):
        SamSegmenter(tiny, model_type="vit_b")
    with pytest.raises(BadInputError, match="unknown model_type 'vit_x'"):
        SamSegmenter(tiny, model_type="vit_x")
