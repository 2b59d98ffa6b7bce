"""Writing a mask store: buffered appends under a temporary name, committed atomically (see schema)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import h5py
import numpy as np
from unsamflow.pipeline.atomic import temp_path
from unsamflow.pipeline.canonical import canonical_json
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.store import codec
from unsamflow.pipeline.store.integrity import commit_store
from unsamflow.pipeline.store.schema import (
    _BAD_FIELDS,
    _DERIVED_FIELDS,
    _FRAME_FIELDS,
    _GZIP,
    _MASK_FIELDS,
    _STR,
    DESCRIPTIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    STORE_DESCRIPTION,
    library_version,
    seg_dtype,
)


class Appender:
    """Buffered appends to resizable 1-D-ragged datasets: memory stays bounded by `flush_bytes`."""

    def __init__(self, h5: h5py.File, fields: dict, flush_bytes: int = 32 << 20):
        self.h5 = h5
        self.fields = fields
        self.flush_bytes = flush_bytes
        self.pending: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        self.pending_bytes = 0
        self.sizes = {name: 0 for name in fields}  # rows written + buffered
        self.flush_s = 0.0  # time spent writing to HDF5 (compression included), for the phase profile
        for name, (dtype, tail, chunk) in fields.items():
            if name in h5:
                self.sizes[name] = h5[name].shape[0]
                continue
            ds = h5.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                                   chunks=(chunk, *tail), **_GZIP)
            if name in DESCRIPTIONS:
                ds.attrs["description"] = DESCRIPTIONS[name]

    def add(self, name: str, values) -> int:
        """Queue rows for `name`; returns the row index of the first of them."""
        dtype, tail, _ = self.fields[name]
        arr = np.asarray(values, dtype=object if dtype is _STR else dtype).reshape(-1, *tail)
        start = self.sizes[name]
        self.sizes[name] += len(arr)
        self.pending[name].append(arr)
        self.pending_bytes += arr.nbytes
        if self.pending_bytes >= self.flush_bytes:
            self.flush()
        return start

    def flush(self) -> None:
        t0 = time.perf_counter()
        for name, parts in self.pending.items():
            if not parts:
                continue
            ds = self.h5[name]
            data = np.concatenate(parts)
            old = ds.shape[0]
            ds.resize(old + len(data), axis=0)
            ds[old:] = data
            parts.clear()
        self.pending_bytes = 0
        self.flush_s += time.perf_counter() - t0


def check_derived(frame_id: str, shape: tuple[int, int], n_masks: int, full_seg, key_objects
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(full_seg in its smallest unsigned dtype, key indices as int64), or StoreError naming the frame."""
    full_seg = np.asarray(full_seg)
    if full_seg.shape != tuple(shape):
        raise StoreError(f"frame {frame_id!r}: full_seg shape {full_seg.shape} != image shape {tuple(shape)}")
    if full_seg.size and (full_seg.min() < 0 or full_seg.max() > n_masks):
        raise StoreError(f"frame {frame_id!r}: full_seg labels outside 0..{n_masks} (it has {n_masks} masks)")
    key = np.asarray(key_objects, np.int64).reshape(-1)
    if key.size and (key.min() < 0 or key.max() >= n_masks):
        raise StoreError(f"frame {frame_id!r}: key-object index outside 0..{n_masks - 1}")
    dt = seg_dtype(int(full_seg.max()) if full_seg.size else 0)
    return np.ascontiguousarray(full_seg, dtype=dt), key


def add_derived(app: Appender, full_seg: np.ndarray, key: np.ndarray) -> None:
    app.add("derived/seg_start", app.sizes["derived/full_seg"])
    app.add("derived/seg_itemsize", full_seg.dtype.itemsize)
    app.add("derived/full_seg", full_seg.view(np.uint8).reshape(-1))
    app.add("derived/key_start", app.sizes["derived/key_objects"])
    app.add("derived/key_count", key.size)
    app.add("derived/key_objects", key)


def _integral(values, what: str, frame_id: str, i: int) -> np.ndarray:
    arr = np.asarray(values, np.float64).reshape(-1)
    if arr.size != 4 or not np.all(arr == np.round(arr)):
        raise StoreError(f"frame {frame_id!r}, mask {i}: {what} must be 4 integers, got {values!r}")
    return arr.astype(np.int32)


def _columns(records: list[dict], frame_id: str) -> dict[str, np.ndarray]:
    """The records' metadata as arrays, checked: one conversion per field for the whole frame (per
    record and field it was most of add_frame's time); a malformed record is named as before."""
    n = len(records)

    def stack(key: str, width: int) -> np.ndarray | None:
        try:
            return np.asarray([r[key] for r in records], np.float64).reshape(n, width)
        except ValueError:  # ragged or the wrong length somewhere: the loops below name it
            return None

    def integral_boxes(what: str) -> np.ndarray:
        arr = stack(what, 4)
        if arr is None:  # record by record, as it always was (mixed nesting such as [[x, y, w, h]] passes)
            return np.stack([_integral(r[what], what, frame_id, i) for i, r in enumerate(records)])
        for i in np.flatnonzero((arr != np.round(arr)).any(axis=1)):
            _integral(records[i][what], what, frame_id, int(i))  # raises, naming the mask
        return arr

    bbox, crop_box, points = integral_boxes("bbox"), integral_boxes("crop_box"), stack("point_coords", 2)
    if points is None:
        rows = []
        for i, rec in enumerate(records):
            pc = np.asarray(rec["point_coords"], np.float64).reshape(-1)
            if pc.size != 2:
                raise StoreError(f"frame {frame_id!r}, mask {i}: point_coords must be one [x, y] point")
            rows.append(pc)
        points = np.stack(rows)
    return {
        "area": np.asarray([int(r["area"]) for r in records], np.int64),
        "bbox": bbox.astype(np.int32),
        "crop_box": crop_box.astype(np.int32),
        "predicted_iou": np.asarray([float(r["predicted_iou"]) for r in records], np.float64),
        "stability_score": np.asarray([float(r["stability_score"]) for r in records], np.float64),
        "point_coords": points,
    }


class StoreWriter:
    """Writes one store under a temporary name; `commit()` makes it appear complete, atomically.

    Use as a context manager: an exception (or `abort()`) removes the temporary file and leaves
    any existing file at `path` untouched; leaving the block normally commits. Frames are buffered
    up to `buffer_bytes` and then appended to resizable datasets, so memory stays bounded however
    many frames a shard has.
    """

    def __init__(self, path: str | Path, *, segmenter: dict, derive_config: dict, source: dict,
                 shard: dict | None = None, buffer_bytes: int = 32 << 20):
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._h5: h5py.File | None = h5py.File(self.tmp, "w")
        self._ids: set[str] = set()
        self._done = False
        attrs = self._h5.attrs
        attrs["description"] = STORE_DESCRIPTION
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["segmenter"] = canonical_json(segmenter)
        attrs["derive_config"] = canonical_json(derive_config)
        attrs["source"] = canonical_json(source)
        attrs["shard"] = canonical_json(shard or {})
        attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        attrs["library_version"] = library_version()
        fields = {**_FRAME_FIELDS, **_MASK_FIELDS, **_DERIVED_FIELDS, **_BAD_FIELDS}
        self._app = Appender(self._h5, fields, flush_bytes=buffer_bytes)

    @property
    def write_s(self) -> float:
        """Seconds spent in HDF5 writes (compression included) so far; the rest of add_frame is encoding."""
        return self._app.flush_s

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()

    def _check_new(self, frame_id: str) -> None:
        if self._done:
            raise StoreError(f"{self.path}: writer already committed or aborted")
        if not isinstance(frame_id, str) or not frame_id:
            raise StoreError(f"{self.path}: frame id must be a non-empty string, got {frame_id!r}")
        if frame_id in self._ids:
            raise StoreError(f"{self.path}: frame {frame_id!r} added twice")

    def add_frame(self, frame_id: str, *, image_shape: tuple[int, int], sha256: str,
                  records: list[dict], full_seg: np.ndarray, key_objects,
                  boxes: np.ndarray | None = None, masks=None) -> None:
        """One segmented frame: its SAM-style records and derived products.

        `boxes`: the masks' tight boxes (`codec.tight_boxes`) when the caller computed them already.
        `masks`: the masks as `pipeline.masks.CropMasks` (tight boxes and their crops); then the
        records' own "segmentation" is not read (it may be absent), and no full-frame mask is needed.
        """
        self._check_new(frame_id)
        shape = (int(image_shape[0]), int(image_shape[1]))
        if len(sha256) != 64:
            raise StoreError(f"frame {frame_id!r}: sha256 must be 64 hex characters, got {sha256!r}")
        app = self._app
        n = len(records)
        if masks is not None and (len(masks.crops) != n or tuple(masks.shape) != shape):
            raise StoreError(f"frame {frame_id!r}: {len(masks.crops)} crops of a {masks.shape} frame for "
                             f"{n} records of a {shape} frame")
        if masks is not None:  # the segment stage's path: every mask at once
            box = np.asarray(masks.boxes, np.int64).reshape(n, 4)
            runs, run_count = codec.encode_crops(masks.crops)
        else:
            box, parts = np.zeros((n, 4), np.int64), []
            for i, rec in enumerate(records):
                seg = np.asarray(rec["segmentation"], bool)
                if seg.shape != shape:
                    raise StoreError(
                        f"frame {frame_id!r}, mask {i}: shape {seg.shape} != image shape {shape}")
                box[i], mask_runs = codec.encode_mask(seg, None if boxes is None else boxes[i])
                parts.append(mask_runs)
            runs = np.concatenate(parts) if parts else np.zeros(0, codec.RUN_DTYPE)
            run_count = np.fromiter((p.size for p in parts), np.int64, n)
        cols = _columns(records, frame_id)
        cols["box"] = box
        cols["run_start"] = app.sizes["masks/runs"] + np.cumsum(run_count) - run_count
        cols["run_count"] = run_count
        full_seg, key = check_derived(frame_id, shape, n, full_seg, key_objects)  # before any append
        app.add("frames/id", [frame_id])
        app.add("frames/image_shape", shape)
        app.add("frames/sha256", sha256.encode("ascii"))
        app.add("frames/mask_start", app.sizes["masks/area"])
        app.add("frames/mask_count", n)
        for k, v in cols.items():
            app.add(f"masks/{k}", v)
        app.add("masks/runs", runs)
        add_derived(app, full_seg, key)
        self._ids.add(frame_id)

    def add_bad(self, frame_id: str, reason: str) -> None:
        """A frame that could not be used, with why (it has no row and no masks)."""
        self._check_new(frame_id)
        self._app.add("bad/id", [frame_id])
        self._app.add("bad/reason", [str(reason)])
        self._ids.add(frame_id)

    def commit(self) -> Path:
        """Flush, close, fsync, rename to the final name (replacing an older store), then record the
        store's size and sha256 beside it (see integrity), so that later damage is caught before HDF5
        parses the file."""
        if self._done:
            raise StoreError(f"{self.path}: writer already committed or aborted")
        try:
            self._app.flush()
            self._h5.attrs["frame_count"] = self._app.sizes["frames/id"]
            self._h5.attrs["bad_count"] = self._app.sizes["bad/id"]
            self._h5.close()
            self._h5 = None
            commit_store(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; the final path is not touched."""
        self._done = True
        if self._h5 is not None:
            with contextlib.suppress(Exception):  # already broken; the file goes anyway
                self._h5.close()
            self._h5 = None
        self.tmp.unlink(missing_ok=True)
