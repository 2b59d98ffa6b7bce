"""The store's vectorised mask decoder and its HDF5 filters: exact against the per-mask decoder, on
awkward masks; stores with the current filters and with the old ones (gzip-4, no shuffle) read the same."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import unsamflow.pipeline.store.writer as writer_mod
from unsamflow.pipeline.masks import CropMasks
from unsamflow.pipeline.store import MaskStore, StoreWriter, codec, schema
from unsamflow.pipeline.store.integrity import StoreCorrupt


def per_mask_decode(shape, boxes, runs, starts, counts) -> np.ndarray:
    """The decoder before vectorisation: one decode_mask per mask."""
    out = np.zeros((len(boxes), *shape), bool)
    for i in range(len(boxes)):
        s = int(starts[i])
        codec.decode_mask(shape, boxes[i], runs[s : s + int(counts[i])], out[i])
    return out


def awkward_masks(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Empty, single-pixel, full, box starting with a set pixel and with an unset one (odd and even run
    counts), thin lines, and random blobs of every density."""
    H, W = shape
    masks = [np.zeros(shape, bool)]
    one = np.zeros(shape, bool)
    one[rng.integers(H), rng.integers(W)] = True
    masks.append(one)
    corner = np.zeros(shape, bool)
    corner[H - 1, W - 1] = True
    masks.append(corner)
    masks.append(np.ones(shape, bool))
    diag = np.zeros(shape, bool)  # box starts with an unset pixel (run counts start with a real 0-run)
    k = min(H, W)
    diag[np.arange(k), np.arange(k)[::-1]] = True
    masks.append(diag)
    masks.append(np.eye(H, W, dtype=bool))  # box starts with a set pixel (a 0-run of length 0)
    row = np.zeros(shape, bool)
    row[rng.integers(H), :] = True
    masks.append(row)
    for p in (0.05, 0.5, 0.95):
        for _ in range(4):
            m = np.zeros(shape, bool)
            y0, x0 = rng.integers(H), rng.integers(W)
            y1, x1 = rng.integers(y0, H) + 1, rng.integers(x0, W) + 1
            m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < p
            masks.append(m)
    order = rng.permutation(len(masks))
    return np.stack(masks)[order]


def encode_all(masks: np.ndarray, gap: int = 0, rng: np.random.Generator | None = None):
    """(boxes, flat runs, starts, counts) as a store holds them; `gap` junk runs between masks and a
    shuffled placement exercise non-contiguous run slices (read_masks with indices)."""
    enc = [codec.encode_mask(m) for m in masks]
    order = np.arange(len(enc)) if rng is None else rng.permutation(len(enc))
    runs, starts, pos = [], np.zeros(len(enc), np.int64), 0
    for i in order:
        runs.append(np.full(gap, 7, codec.RUN_DTYPE))
        pos += gap
        starts[i] = pos
        runs.append(enc[i][1])
        pos += enc[i][1].size
    boxes = np.array([b for b, _ in enc], np.int32).reshape(-1, 4)
    counts = np.array([r.size for _, r in enc], np.int32)
    flat = np.concatenate(runs) if runs else np.zeros(0, codec.RUN_DTYPE)
    return boxes, flat, starts, counts


@pytest.mark.parametrize("batch", [1, 50, codec.DECODE_BATCH])  # pixels per np.repeat: 1 = mask by mask
@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (9, 13), (64, 48)])
def test_decode_masks_equals_per_mask_decoder(shape, batch, monkeypatch):
    monkeypatch.setattr(codec, "DECODE_BATCH", batch)
    rng = np.random.default_rng(sum(shape))
    masks = awkward_masks(shape, rng)
    counts_parity = {len(codec.encode_mask(m)[1]) % 2 for m in masks if m.any()}
    if min(shape) > 1:  # both parities of run counts occur (odd: the box ends on an unset pixel)
        assert counts_parity == {0, 1}
    for gap, r in ((0, None), (3, rng)):
        args = encode_all(masks, gap, r)
        out = codec.decode_masks(shape, *args)
        assert out.dtype == bool and out.shape == masks.shape and out.flags.c_contiguous
        assert np.array_equal(out, masks)
        assert np.array_equal(out, per_mask_decode(shape, *args))
        boxes, crops = codec.decode_crops(*args)
        assert np.array_equal(boxes, codec.tight_boxes(masks))
        for m, b, c in zip(masks, boxes, crops, strict=True):
            y, x, h, w = b
            assert c.shape == (h, w) and np.array_equal(c, m[y : y + h, x : x + w])


def test_decode_masks_of_none_and_subsets():
    shape = (7, 5)
    masks = awkward_masks(shape, np.random.default_rng(3))
    boxes, runs, starts, counts = encode_all(masks)
    empty = codec.decode_masks(shape, boxes[:0], runs, starts[:0], counts[:0])
    assert empty.shape == (0, *shape) and empty.dtype == bool
    assert codec.decode_crops(boxes[:0], runs, starts[:0], counts[:0])[1] == []
    pick = np.array([4, 0, 4, 2])  # any order, repeats: runs no longer one contiguous slice
    out = codec.decode_masks(shape, boxes[pick], runs, starts[pick], counts[pick])
    assert np.array_equal(out, masks[pick])


def test_decode_rejects_runs_that_do_not_cover_their_box():
    shape = (6, 6)
    m = np.zeros(shape, bool)
    m[1:4, 2:5] = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 1]], bool)
    boxes, runs, starts, counts = encode_all(m[None])
    bad = runs.copy()
    bad[-1] += 1
    with pytest.raises(ValueError, match="cover"):
        codec.decode_masks(shape, boxes, bad, starts, counts)
    with pytest.raises(ValueError, match="outside"):
        codec.decode_masks(shape, boxes, runs[:-1], starts, counts)


# -- stores --------------------------------------------------------------------------------------
SEGMENTER = {"name": "graph"}
DERIVE = {"min_h": 50}


def _frames(rng: np.random.Generator) -> list[dict]:
    frames = []
    for k, shape in enumerate([(37, 53), (20, 11), (5, 5)]):
        masks = awkward_masks(shape, rng)
        recs = []
        for m in masks:
            recs.append({"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 1, 1],
                         "predicted_iou": float(rng.random()), "stability_score": float(rng.random()),
                         "point_coords": [[1.5, 2.5]], "crop_box": [0, 0, shape[1], shape[0]]})
        frames.append({"frame_id": f"f{k}", "image_shape": shape, "sha256": f"{k}" * 64, "records": recs,
                       "full_seg": rng.integers(0, len(masks) + 1, shape), "key_objects": [1, 0],
                       "masks": masks})
    frames.append({"frame_id": "none", "image_shape": (4, 3), "sha256": "e" * 64, "records": [],
                   "full_seg": np.zeros((4, 3), int), "key_objects": [], "masks": np.zeros((0, 4, 3), bool)})
    return frames


def _write(path, frames) -> None:
    with StoreWriter(path, segmenter=SEGMENTER, derive_config=DERIVE, source={}) as w:
        for f in frames:
            w.add_frame(f["frame_id"], image_shape=f["image_shape"], sha256=f["sha256"], records=f["records"],
                        full_seg=f["full_seg"], key_objects=f["key_objects"])


def _check_reads(path, frames) -> None:
    with MaskStore(path) as store:
        for f in frames:
            fm = store.read(f["frame_id"])
            assert np.array_equal(fm.masks, f["masks"]) and fm.masks.shape == f["masks"].shape
            assert np.array_equal(fm.full_seg, f["full_seg"])
            assert fm.predicted_iou.tolist() == [r["predicted_iou"] for r in f["records"]]
            cm = store.read_crops(f["frame_id"])
            assert isinstance(cm, CropMasks) and cm.shape == tuple(f["image_shape"])
            ref = CropMasks.from_stack(f["masks"])
            assert np.array_equal(cm.boxes, ref.boxes.reshape(-1, 4))
            assert all(np.array_equal(a, b) for a, b in zip(cm.crops, ref.crops, strict=True))
            if len(f["masks"]) > 3:
                idx = [3, 0, 3]
                assert np.array_equal(store.read_masks(f["frame_id"], idx), f["masks"][idx])
                sub = store.read_crops(f["frame_id"], idx)
                assert all(np.array_equal(sub.crops[j], ref.crops[i]) for j, i in enumerate(idx))


def test_store_with_current_filters_reads_back_exactly(tmp_path):
    frames = _frames(np.random.default_rng(0))
    _write(tmp_path / "s.h5", frames)
    with h5py.File(tmp_path / "s.h5", "r") as h5:
        for name in ("masks/runs", "masks/box", "derived/full_seg", "frames/id"):
            ds = h5[name]
            assert ds.shuffle and ds.compression == "gzip"
            assert ds.compression_opts == schema._GZIP["compression_opts"]
    _check_reads(tmp_path / "s.h5", frames)


def test_old_store_gzip4_without_shuffle_still_reads(tmp_path, monkeypatch):
    frames = _frames(np.random.default_rng(1))
    monkeypatch.setattr(writer_mod, "_GZIP", {"compression": "gzip", "compression_opts": 4})  # as before
    _write(tmp_path / "old.h5", frames)
    with h5py.File(tmp_path / "old.h5", "r") as h5:
        assert not h5["masks/runs"].shuffle and h5["masks/runs"].compression_opts == 4
    _check_reads(tmp_path / "old.h5", frames)


def test_damaged_runs_are_store_corrupt(tmp_path):
    frames = _frames(np.random.default_rng(2))
    _write(tmp_path / "s.h5", frames)
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        runs = h5["masks/runs"]
        runs[0] = runs[0] + 1
    with MaskStore(tmp_path / "s.h5") as store, pytest.raises(StoreCorrupt, match="f0"):
        store.read_masks("f0")
