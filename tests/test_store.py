"""Mask stores and the index: exact round trips, ragged edge cases, atomicity, fork safety, errors."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from unsamflow.pipeline.derive import DeriveConfig, derive
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.rederive import rewrite_derived
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import FORMAT_VERSION, MaskStore, StoreWriter
from unsamflow.pipeline.store.index import INDEX_NAME, Index, build_index, store_files

JUDO = ["video/judo/00000.jpg", "video/judo/00001.jpg"]
SEGMENTER = {"name": "graph", "version": "1", "config": {"scales": [100.0, 300.0]}}
DERIVE = DeriveConfig().to_dict()
SOURCE = {"layout": "folder", "root": "/data", "manifest_sha256": "ab" * 32}


def derived(records: list[dict], shape: tuple[int, int], cfg: DeriveConfig | None = None):
    if not records:
        return np.zeros(shape, np.int32), np.zeros(0, np.int64)
    masks = np.stack([r["segmentation"] for r in records])
    return derive(masks, np.array([r["bbox"] for r in records], float), cfg or DeriveConfig())


@pytest.fixture(scope="module")
def real_frames(shared_data: Path) -> list[dict]:
    """Graph-segmenter records of two real frames (at half size, to keep derive() quick), derived."""
    seg = build_segmenter(SegmenterSpec("graph"))
    out = []
    for fid in JUDO:
        rgb, sha = read_rgb(shared_data / fid)
        rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        records = seg(rgb)
        full_seg, key = derived(records, rgb.shape[:2])
        out.append({"frame_id": fid, "image_shape": rgb.shape[:2], "sha256": sha, "records": records,
                    "full_seg": full_seg, "key_objects": key})
    return out


def record(mask: np.ndarray, iou: float = 0.9, stab: float = 0.95) -> dict:
    """A record in segment-anything's conventions (bbox w = x_max - x_min)."""
    ys, xs = np.nonzero(mask)
    bbox = [0, 0, 0, 0]
    if ys.size:
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
    return {"segmentation": mask, "area": int(mask.sum()), "bbox": bbox, "predicted_iou": iou,
            "stability_score": stab, "point_coords": [[float(xs.mean()) if xs.size else 0.0, 1.5]],
            "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def write(path: Path, frames: list[dict], bad: dict[str, str] | None = None, **meta) -> Path:
    kwargs = {"segmenter": SEGMENTER, "derive_config": DERIVE, "source": SOURCE, "shard": {"index": 0}}
    kwargs.update(meta)
    with StoreWriter(path, **kwargs) as w:
        for f in frames:
            w.add_frame(f["frame_id"], image_shape=f["image_shape"], sha256=f["sha256"],
                        records=f["records"], full_seg=f["full_seg"], key_objects=f["key_objects"])
        for fid, reason in (bad or {}).items():
            w.add_bad(fid, reason)
        w.commit()
    return path


def assert_same(fm, f: dict) -> None:
    recs = f["records"]
    assert fm.frame_id == f["frame_id"]
    assert fm.image_shape == tuple(f["image_shape"])
    assert fm.sha256 == f["sha256"]
    assert fm.masks.dtype == bool and fm.masks.shape == (len(recs), *f["image_shape"])
    for i, r in enumerate(recs):
        assert np.array_equal(fm.masks[i], r["segmentation"])
        assert fm.area[i] == r["area"]
        assert fm.bbox[i].tolist() == list(r["bbox"])
        assert fm.predicted_iou[i] == r["predicted_iou"]  # exact: float64 on disk
        assert fm.stability_score[i] == r["stability_score"]
        assert fm.point_coords[i].tolist() == list(np.asarray(r["point_coords"], float).reshape(-1))
        assert fm.crop_box[i].tolist() == list(r["crop_box"])
    assert np.array_equal(fm.full_seg, f["full_seg"])
    assert np.array_equal(fm.key_objects, f["key_objects"])


def test_round_trip_every_field(tmp_path, real_frames):
    path = write(tmp_path / "s.h5", real_frames, bad={"video/judo/bad.jpg": "JPEG is truncated"})
    assert not list(tmp_path.glob(".*tmp-*"))
    store = MaskStore(path)
    assert store.format_version == FORMAT_VERSION
    assert store.segmenter == SEGMENTER and store.derive_config == DERIVE
    assert store.source == SOURCE and store.shard == {"index": 0}
    assert store.attrs["format"] == "unsamflow-masks" and store.attrs["created"].endswith("Z")
    assert "library_version" in store.attrs
    assert store.frame_ids == JUDO and len(store) == 2
    assert store.bad_frames == {"video/judo/bad.jpg": "JPEG is truncated"}
    for row, f in enumerate(real_frames):
        assert store.row(f["frame_id"]) == row
        assert_same(store.read(f["frame_id"]), f)
        assert_same(store.read(row), f)
        assert np.array_equal(store.read_full_seg(row), f["full_seg"])
        assert store.read_full_seg(row).dtype == np.uint8  # smallest dtype holding the labels
        keys = store.read_key_objects(f["frame_id"])
        assert np.array_equal(keys, f["key_objects"])
        sub = store.read_masks(row, keys)
        assert np.array_equal(sub, np.stack([f["records"][k]["segmentation"] for k in keys]))
    store.close()


def test_ragged_edge_cases(tmp_path):
    h, w = 9, 13
    corner_tl = np.zeros((h, w), bool)
    corner_tl[0, 0] = True
    corner_br = np.zeros((h, w), bool)
    corner_br[-1, -1] = True
    borders = np.zeros((h, w), bool)
    borders[0, :] = borders[-1, :] = borders[:, 0] = borders[:, -1] = True
    full = np.ones((h, w), bool)
    stripe = np.zeros((h, w), bool)
    stripe[:, 5] = True
    masks = [corner_tl, corner_br, borders, full, stripe, np.zeros((h, w), bool)]
    frames = [
        {"frame_id": "empty", "image_shape": (h, w), "sha256": "0" * 64, "records": [],
         "full_seg": np.zeros((h, w), np.int32), "key_objects": np.zeros(0, np.int64)},
        {"frame_id": "edges", "image_shape": (h, w), "sha256": "1" * 64,
         "records": [record(m) for m in masks],
         "full_seg": np.arange(h * w).reshape(h, w) % 7, "key_objects": np.array([3, 0])},
        {"frame_id": "1x1", "image_shape": (1, 1), "sha256": "2" * 64, "records": [record(full[:1, :1])],
         "full_seg": np.ones((1, 1)), "key_objects": np.zeros(0)},
        {"frame_id": "empty-again", "image_shape": (2, 3), "sha256": "3" * 64, "records": [],
         "full_seg": np.zeros((2, 3)), "key_objects": []},
    ]
    # More than 255 labels: full_seg needs 16 bits (the reference's 8-bit limit does not apply).
    many = [record(np.arange(20 * 20).reshape(20, 20) == i) for i in range(300)]
    frames.append({"frame_id": "many", "image_shape": (20, 20), "sha256": "4" * 64, "records": many,
                   "full_seg": np.arange(400).reshape(20, 20) % 301, "key_objects": np.arange(300)})
    store = MaskStore(write(tmp_path / "e.h5", frames))
    for f in frames:
        f["full_seg"] = np.asarray(f["full_seg"])
        f["key_objects"] = np.asarray(f["key_objects"], np.int64)
        assert_same(store.read(f["frame_id"]), f)
    assert store.read("empty").masks.shape == (0, h, w)
    assert store.read_masks("edges", []).shape == (0, h, w)
    assert store.read_full_seg("many").dtype == np.uint16


def test_small_buffer_appends_frame_by_frame(tmp_path, real_frames):
    """buffer_bytes=1 flushes after every dataset append: the resize-and-append path of long shards."""
    frames = [dict(f, frame_id=f"{f['frame_id']}#{k}") for k in range(3) for f in real_frames]
    with StoreWriter(tmp_path / "s.h5", segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE,
                     buffer_bytes=1) as w:
        for i, f in enumerate(frames):
            w.add_frame(f["frame_id"], image_shape=f["image_shape"], sha256=f["sha256"], records=f["records"],
                        full_seg=f["full_seg"], key_objects=f["key_objects"])
            if i == 2:
                w.add_bad("between", "unreadable")
    store = MaskStore(tmp_path / "s.h5")
    assert store.frame_ids == [f["frame_id"] for f in frames]
    assert store.bad_frames == {"between": "unreadable"}
    for f in reversed(frames):
        assert_same(store.read(f["frame_id"]), f)


def test_atomic_commit_keeps_previous_store(tmp_path, real_frames):
    path = write(tmp_path / "s.h5", real_frames[:1])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(path, segmenter=SEGMENTER,
                                                               derive_config=DERIVE, source=SOURCE) as w:
        f = real_frames[1]
        w.add_frame(f["frame_id"], image_shape=f["image_shape"], sha256=f["sha256"], records=f["records"],
                    full_seg=f["full_seg"], key_objects=f["key_objects"])
        raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.sha256.json"]  # + its checksum
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "new.h5", segmenter=SEGMENTER,
                                                  derive_config=DERIVE, source=SOURCE):
        raise RuntimeError("boom")
    assert not (tmp_path / "new.h5").exists() and len(list(tmp_path.iterdir())) == 2
    w = StoreWriter(tmp_path / "aborted.h5", segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE)
    w.add_bad("x", "unreadable")
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.sha256.json"]


def _killed_writer(path: str, frame: dict) -> None:
    w = StoreWriter(path, segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE)
    w.add_frame(frame["frame_id"], image_shape=frame["image_shape"], sha256=frame["sha256"],
                records=frame["records"], full_seg=frame["full_seg"], key_objects=frame["key_objects"])
    w._app.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_writer_leaves_only_an_ignored_temp_file(tmp_path, real_frames):
    write(tmp_path / "a.h5", real_frames[:1])
    proc = mp.get_context("fork").Process(target=_killed_writer,
                                          args=(str(tmp_path / "b.h5"), real_frames[1]))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".b.h5.tmp-{proc.pid}", "a.h5", "a.h5.sha256.json"]
    assert [p.name for p in store_files(tmp_path)] == ["a.h5"]
    assert build_index(tmp_path).frame_ids == [real_frames[0]["frame_id"]]


def _child_read(store: MaskStore, q) -> None:
    fm = store.read(1)
    q.put((os.getpid(), store._pid, fm.frame_id, int(fm.masks.sum()), int(store.read_full_seg(0).sum())))


def test_fork_safety(tmp_path, real_frames):
    store = MaskStore(write(tmp_path / "s.h5", real_frames))
    parent = store.read(0)  # parent opens its handle before forking
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_read, args=(store, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    want_masks = int(np.sum([r["segmentation"].sum() for r in real_frames[1]["records"]]))
    for child_pid, store_pid, fid, masks_sum, seg_sum in results:
        assert store_pid == child_pid != os.getpid()  # each child opened its own handle
        assert (fid, masks_sum, seg_sum) == (JUDO[1], want_masks, int(parent.full_seg.sum()))
    assert store._pid == os.getpid()
    assert np.array_equal(store.read(0).masks, parent.masks)  # parent handle still good


def test_store_errors(tmp_path, real_frames):
    with pytest.raises(StoreError, match="not found: .*missing.h5"):
        MaskStore(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="text.h5: not a readable HDF5"):
        _ = MaskStore(tmp_path / "text.h5").frame_ids
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="other.h5: not an unsamflow mask store"):
        _ = MaskStore(tmp_path / "other.h5").segmenter
    newer = write(tmp_path / "newer.h5", real_frames[:1])
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match=f"newer.h5: format version {FORMAT_VERSION + 1} is newer"):
        _ = MaskStore(newer).frame_ids
    store = MaskStore(write(tmp_path / "ok.h5", real_frames[:1], bad={"b.png": "empty"}))
    with pytest.raises(StoreError, match="ok.h5: no frame 'nope'"):
        store.read("nope")
    with pytest.raises(StoreError, match="recorded as bad: empty"):
        store.read_full_seg("b.png")
    with pytest.raises(StoreError, match="ok.h5: row 5 out of range"):
        store.read(5)
    with pytest.raises(StoreError, match="has .* masks, asked for"):
        store.read_masks(0, [10_000])
    f = real_frames[0]
    with pytest.raises(StoreError, match="added twice"), StoreWriter(
        tmp_path / "dup.h5", segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE
    ) as w:
        w.add_bad(f["frame_id"], "x")
        w.add_bad(f["frame_id"], "y")
    with pytest.raises(StoreError, match="full_seg shape"), StoreWriter(
        tmp_path / "shape.h5", segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE
    ) as w:
        w.add_frame("f", image_shape=(5, 5), sha256="0" * 64, records=[], full_seg=np.zeros((4, 5)),
                    key_objects=[])
    assert not (tmp_path / "dup.h5").exists() and not (tmp_path / "shape.h5").exists()
    # A refused frame leaves nothing behind: the writer can go on with the next one.
    ones = record(np.ones((5, 5), bool))
    with StoreWriter(tmp_path / "partial.h5", segmenter=SEGMENTER, derive_config=DERIVE, source=SOURCE) as w:
        with pytest.raises(StoreError, match="frame 'f': key-object index outside 0..0"):
            w.add_frame("f", image_shape=(5, 5), sha256="0" * 64, records=[ones],
                        full_seg=np.zeros((5, 5)), key_objects=[3])
        w.add_frame("f", image_shape=(5, 5), sha256="0" * 64, records=[ones], full_seg=np.ones((5, 5)),
                    key_objects=[0])
    fm = MaskStore(tmp_path / "partial.h5").read("f")
    assert fm.masks.shape == (1, 5, 5) and fm.key_objects.tolist() == [0] and fm.full_seg.sum() == 25


def test_rewrite_derived(tmp_path, real_frames):
    path = write(tmp_path / "s.h5", real_frames)
    masks_before = MaskStore(path).read(1).masks
    cfg = DeriveConfig(min_overlaps=1, min_h=10, min_w=10)
    rewrite_derived(path, cfg)
    store = MaskStore(path)
    assert store.derive_config == cfg.to_dict() and store.segmenter == SEGMENTER
    for row, f in enumerate(real_frames):
        full_seg, key = derived(f["records"], f["image_shape"], cfg)
        assert np.array_equal(store.read_full_seg(row), full_seg)
        assert np.array_equal(store.read_key_objects(row), key)
    assert len(store.read_key_objects(1)) > len(real_frames[1]["key_objects"])
    assert np.array_equal(store.read(1).masks, masks_before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s.h5.sha256.json"]


def test_index_maps_frames_and_refuses_mixtures(tmp_path, real_frames):
    a, b = real_frames
    write(tmp_path / "a.h5", [a], bad={"video/judo/x.jpg": "unreadable"})
    write(tmp_path / "b.h5", [b])
    index = build_index(tmp_path)
    assert json.loads((tmp_path / INDEX_NAME).read_text())["frames"] == {JUDO[0]: [0, 0], JUDO[1]: [1, 0]}
    loaded = Index.load(tmp_path)
    assert loaded.frame_ids == JUDO and loaded.bad_frames == {"video/judo/x.jpg": "unreadable"}
    assert loaded.locate(JUDO[1]) == (tmp_path / "b.h5", 0)
    assert_same(loaded.open(JUDO[1]), b)
    with pytest.raises(StoreError, match="no frame 'zzz'"):
        loaded.open("zzz")
    loaded.close()
    assert index.segmenter == SEGMENTER

    # A store rewritten after indexing makes the index stale.
    rewrite_derived(tmp_path / "b.h5", DeriveConfig(min_overlaps=2))
    with pytest.raises(StoreError, match="stale: .*b.h5 changed"):
        Index.load(tmp_path)
    with pytest.raises(
        StoreError, match="a.h5 and b.h5 differ in derive config field 'min_overlaps': 6 vs 2"
    ):
        build_index(tmp_path)
    other = {**SEGMENTER, "config": {"scales": [100.0, 900.0]}}
    write(tmp_path / "b.h5", [b], segmenter=other)
    with pytest.raises(StoreError, match=r"a.h5 and b.h5 differ in segmenter field 'config'"):
        build_index(tmp_path)
    write(tmp_path / "b.h5", [b, a])
    with pytest.raises(StoreError, match=f"frame '{JUDO[0]}' is in two stores: a.h5 and b.h5"):
        build_index(tmp_path)
    write(tmp_path / "b.h5", [b], bad={"video/judo/x.jpg": "again"})
    with pytest.raises(StoreError, match="is in two stores"):
        build_index(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no mask stores"):
        build_index(tmp_path / "empty")


def test_tight_boxes_of_a_stack_equal_the_per_mask_boxes():
    from unsamflow.pipeline.store.codec import encode_mask, tight_box, tight_boxes

    rng = np.random.default_rng(3)
    masks = np.zeros((6, 17, 23), bool)
    masks[0, 3:9, 4:20] = rng.random((6, 16)) > 0.3
    masks[1, 16, 22] = True  # corner pixel
    masks[2] = True  # whole frame
    masks[4, 0, :] = True  # top row
    masks[5, :, 0] = rng.random(17) > 0.5  # left column, gaps
    boxes = tight_boxes(masks)  # masks[3] stays empty
    assert [tuple(b) for b in boxes] == [tight_box(m) for m in masks]
    for m, b in zip(masks, boxes, strict=True):
        assert encode_mask(m, b)[1].tolist() == encode_mask(m)[1].tolist()
