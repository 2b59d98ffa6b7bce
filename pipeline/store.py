"""HDF5 mask stores: one file per shard, self-describing, written atomically, read one frame at a time.

Layout (format "unsamflow-masks", version 1). Root attributes: format, format_version, segmenter,
derive_config, source, shard (JSON strings), created, library_version. Ragged data is flat with
per-row offsets, so one frame is one slice of each dataset:

    frames/  id, image_shape (n,2), sha256, mask_start, mask_count          one row per good frame
    masks/   area, bbox (m,4) XYWH, predicted_iou, stability_score,
             point_coords (m,2), crop_box (m,4) XYWH,                       one row per mask
             box (m,4) y x h w, run_start, run_count: its run lengths in runs (see mask_codec)
    masks/runs                                                               run lengths, flat uint32
    derived/ seg_start, seg_itemsize, key_start, key_count                  one row per good frame
    derived/full_seg (flat bytes, per-frame smallest uint), derived/key_objects (flat int64)
    bad/     id, reason                                                      frames that could not be used

Everything is gzip-4 (measured in bench_store: gzip-1 is 10% larger for no faster reads; lzf 50%
larger); bulk datasets have 64 KiB chunks, so a frame's masks span a few chunks and share at most the
two at its ends with neighbours. The per-frame offsets are read into memory on open, so reading one
frame is one small slice per dataset and never scans other frames. On 8 Sintel/judo frames with
115 masks each: 48 KiB per frame (masks 24, full_seg 12.5, metadata 4, the rest HDF5's fixed cost,
which a shard of hundreds of frames amortises), 12 ms CPU to read all of a frame, 1.2 ms for full_seg
and key objects only.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline import mask_codec
from pipeline.atomic import temp_path
from pipeline.errors import StoreError

FORMAT_NAME = "unsamflow-masks"
FORMAT_VERSION = 1
BYTES_CHUNK = 1 << 16  # bulk datasets: a frame spans a few chunks, its neighbours share at most two
ROWS_CHUNK = 1024  # per-mask / per-frame metadata
_GZIP: dict[str, Any] = {"compression": "gzip", "compression_opts": 4}
_STR = h5py.string_dtype()
_JSON_ATTRS = ("segmenter", "derive_config", "source", "shard")

# name -> (dtype, trailing shape, chunk length)
_FRAME_FIELDS = {
    "frames/id": (_STR, (), ROWS_CHUNK),
    "frames/image_shape": (np.int32, (2,), ROWS_CHUNK),
    "frames/sha256": ("S64", (), ROWS_CHUNK),
    "frames/mask_start": (np.int64, (), ROWS_CHUNK),
    "frames/mask_count": (np.int32, (), ROWS_CHUNK),
}
_MASK_FIELDS = {
    "masks/area": (np.int64, (), ROWS_CHUNK),
    "masks/bbox": (np.int32, (4,), ROWS_CHUNK),
    "masks/predicted_iou": (np.float64, (), ROWS_CHUNK),
    "masks/stability_score": (np.float64, (), ROWS_CHUNK),
    "masks/point_coords": (np.float64, (2,), ROWS_CHUNK),
    "masks/crop_box": (np.int32, (4,), ROWS_CHUNK),
    "masks/box": (np.int32, (4,), ROWS_CHUNK),
    "masks/run_start": (np.int64, (), ROWS_CHUNK),
    "masks/run_count": (np.int32, (), ROWS_CHUNK),
    "masks/runs": (mask_codec.RUN_DTYPE, (), BYTES_CHUNK // 4),
}
_DERIVED_FIELDS = {
    "derived/seg_start": (np.int64, (), ROWS_CHUNK),
    "derived/seg_itemsize": (np.uint8, (), ROWS_CHUNK),
    "derived/key_start": (np.int64, (), ROWS_CHUNK),
    "derived/key_count": (np.int32, (), ROWS_CHUNK),
    "derived/full_seg": (np.uint8, (), BYTES_CHUNK),
    "derived/key_objects": (np.int64, (), ROWS_CHUNK),
}
_BAD_FIELDS = {"bad/id": (_STR, (), ROWS_CHUNK), "bad/reason": (_STR, (), ROWS_CHUNK)}


@dataclass
class FrameMasks:
    """Everything a store holds about one frame. Per-mask arrays have N rows."""

    frame_id: str
    image_shape: tuple[int, int]
    sha256: str
    masks: np.ndarray  # (N, H, W) bool
    area: np.ndarray  # (N,) int64
    bbox: np.ndarray  # (N, 4) int32 XYWH as the segmenter gave it
    predicted_iou: np.ndarray  # (N,) float64
    stability_score: np.ndarray  # (N,) float64
    point_coords: np.ndarray  # (N, 2) float64 x, y
    crop_box: np.ndarray  # (N, 4) int32 XYWH
    full_seg: np.ndarray  # (H, W) smallest unsigned dtype holding its labels
    key_objects: np.ndarray  # (K,) int64 mask indices


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("unsamflow")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seg_dtype(max_label: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt).newbyteorder("<")
    return np.dtype("<u8")


class _Appender:
    """Buffered appends to resizable 1-D-ragged datasets: memory stays bounded by `flush_bytes`."""

    def __init__(self, h5: h5py.File, fields: dict, flush_bytes: int = 32 << 20):
        self.h5 = h5
        self.fields = fields
        self.flush_bytes = flush_bytes
        self.pending: dict[str, list[np.ndarray]] = {name: [] for name in fields}
        self.pending_bytes = 0
        self.sizes = {name: 0 for name in fields}  # rows written + buffered
        for name, (dtype, tail, chunk) in fields.items():
            if name in h5:
                self.sizes[name] = h5[name].shape[0]
                continue
            h5.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                              chunks=(chunk, *tail), **_GZIP)

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


def _check_derived(frame_id: str, shape: tuple[int, int], n_masks: int, full_seg, key_objects
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
    dt = _seg_dtype(int(full_seg.max()) if full_seg.size else 0)
    return np.ascontiguousarray(full_seg, dtype=dt), key


def _add_derived(app: _Appender, full_seg: np.ndarray, key: np.ndarray) -> None:
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
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["segmenter"] = _json(segmenter)
        attrs["derive_config"] = _json(derive_config)
        attrs["source"] = _json(source)
        attrs["shard"] = _json(shard or {})
        attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        attrs["library_version"] = library_version()
        fields = {**_FRAME_FIELDS, **_MASK_FIELDS, **_DERIVED_FIELDS, **_BAD_FIELDS}
        self._app = _Appender(self._h5, fields, flush_bytes=buffer_bytes)

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
                  boxes: np.ndarray | None = None) -> None:
        """One segmented frame: its SAM-style records and derived products.

        `boxes`: the masks' tight boxes (`mask_codec.tight_boxes`) when the caller computed them already.
        """
        self._check_new(frame_id)
        shape = (int(image_shape[0]), int(image_shape[1]))
        if len(sha256) != 64:
            raise StoreError(f"frame {frame_id!r}: sha256 must be 64 hex characters, got {sha256!r}")
        app = self._app
        n = len(records)
        cols: dict[str, list] = {k: [] for k in ("area", "bbox", "predicted_iou", "stability_score",
                                                 "point_coords", "crop_box", "box", "run_start",
                                                 "run_count")}
        run_pos = app.sizes["masks/runs"]
        runs = []
        for i, rec in enumerate(records):
            seg = np.asarray(rec["segmentation"], bool)
            if seg.shape != shape:
                raise StoreError(f"frame {frame_id!r}, mask {i}: shape {seg.shape} != image shape {shape}")
            box, mask_runs = mask_codec.encode_mask(seg, None if boxes is None else boxes[i])
            cols["box"].append(box)
            cols["run_start"].append(run_pos)
            cols["run_count"].append(mask_runs.size)
            runs.append(mask_runs)
            run_pos += mask_runs.size
            cols["area"].append(int(rec["area"]))
            cols["bbox"].append(_integral(rec["bbox"], "bbox", frame_id, i))
            cols["crop_box"].append(_integral(rec["crop_box"], "crop_box", frame_id, i))
            cols["predicted_iou"].append(float(rec["predicted_iou"]))
            cols["stability_score"].append(float(rec["stability_score"]))
            pc = np.asarray(rec["point_coords"], np.float64).reshape(-1)
            if pc.size != 2:
                raise StoreError(f"frame {frame_id!r}, mask {i}: point_coords must be one [x, y] point")
            cols["point_coords"].append(pc)
        full_seg, key = _check_derived(frame_id, shape, n, full_seg, key_objects)  # before any append
        app.add("frames/id", [frame_id])
        app.add("frames/image_shape", shape)
        app.add("frames/sha256", sha256.encode("ascii"))
        app.add("frames/mask_start", app.sizes["masks/area"])
        app.add("frames/mask_count", n)
        for k, v in cols.items():
            app.add(f"masks/{k}", v)
        app.add("masks/runs", np.concatenate(runs) if runs else np.zeros(0, mask_codec.RUN_DTYPE))
        _add_derived(app, full_seg, key)
        self._ids.add(frame_id)

    def add_bad(self, frame_id: str, reason: str) -> None:
        """A frame that could not be used, with why (it has no row and no masks)."""
        self._check_new(frame_id)
        self._app.add("bad/id", [frame_id])
        self._app.add("bad/reason", [str(reason)])
        self._ids.add(frame_id)

    def commit(self) -> Path:
        """Flush, close, fsync, then rename to the final name (replacing an older store)."""
        if self._done:
            raise StoreError(f"{self.path}: writer already committed or aborted")
        try:
            self._app.flush()
            self._h5.attrs["frame_count"] = self._app.sizes["frames/id"]
            self._h5.attrs["bad_count"] = self._app.sizes["bad/id"]
            self._h5.close()
            self._h5 = None
            _fsync(self.tmp)
            os.replace(self.tmp, self.path)
            _fsync(self.path.parent)
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


class MaskStore:
    """Read-only view of one store. Opens on first use and again after a fork (DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"mask store not found: {self.path}")
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    # -- opening ------------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = None  # a handle inherited through fork is never used (nor closed) here
            self._open()
        return self._h5

    def _open(self) -> None:
        try:
            # Stores are never modified in place (writers replace them whole), so readers need no
            # HDF5 file lock; locking fails on some cluster filesystems.
            h5 = h5py.File(self.path, "r", locking=False)
        except FileNotFoundError:
            raise StoreError(f"mask store not found: {self.path}") from None
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        try:
            fmt = h5.attrs.get("format")
            if fmt != FORMAT_NAME:
                raise StoreError(f"{self.path}: not an unsamflow mask store (format={fmt!r})")
            version = int(h5.attrs.get("format_version", -1))
            if version > FORMAT_VERSION:
                raise StoreError(f"{self.path}: format version {version} is newer than this unsamflow "
                                 f"reads ({FORMAT_VERSION}); upgrade unsamflow")
            if version < 1:
                raise StoreError(f"{self.path}: invalid format version {version}")
            self._meta = {k: json.loads(h5.attrs[k]) for k in _JSON_ATTRS}
            self._version = version
            ids = [s.decode() if isinstance(s, bytes) else s for s in h5["frames/id"][()]]
            self._ids = ids
            self._rows = {fid: i for i, fid in enumerate(ids)}
            self._shape = h5["frames/image_shape"][()]
            self._sha = h5["frames/sha256"][()]
            self._mstart = h5["frames/mask_start"][()]
            self._mcount = h5["frames/mask_count"][()]
            self._segstart = h5["derived/seg_start"][()]
            self._segsize = h5["derived/seg_itemsize"][()]
            self._kstart = h5["derived/key_start"][()]
            self._kcount = h5["derived/key_count"][()]
            self._bad = dict(zip(h5["bad/id"].asstr()[()], h5["bad/reason"].asstr()[()], strict=True))
        except StoreError:
            h5.close()
            raise
        except (KeyError, OSError, ValueError, TypeError) as exc:
            h5.close()
            raise StoreError(f"{self.path}: corrupt or incomplete mask store ({exc})") from None
        self._h5 = h5
        self._pid = os.getpid()

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> MaskStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable for spawn-started workers: the handle stays behind
        return {"path": self.path, "_h5": None, "_pid": None}

    def __repr__(self) -> str:
        return f"MaskStore({str(self.path)!r})"

    # -- metadata -----------------------------------------------------------------------------
    @property
    def format_version(self) -> int:
        self._file()
        return self._version

    @property
    def segmenter(self) -> dict:
        self._file()
        return self._meta["segmenter"]

    @property
    def derive_config(self) -> dict:
        self._file()
        return self._meta["derive_config"]

    @property
    def source(self) -> dict:
        self._file()
        return self._meta["source"]

    @property
    def shard(self) -> dict:
        self._file()
        return self._meta["shard"]

    @property
    def attrs(self) -> dict:
        """Every root attribute (created, library_version, ...), JSON ones decoded."""
        h5 = self._file()
        return {k: self._meta.get(k, v) for k, v in h5.attrs.items()}

    @property
    def frame_ids(self) -> list[str]:
        self._file()
        return list(self._ids)

    @property
    def bad_frames(self) -> dict[str, str]:
        self._file()
        return dict(self._bad)

    def __len__(self) -> int:
        self._file()
        return len(self._ids)

    def __contains__(self, frame_id: str) -> bool:
        self._file()
        return frame_id in self._rows

    def row(self, frame_id: str) -> int:
        self._file()
        try:
            return self._rows[frame_id]
        except KeyError:
            hint = f" (recorded as bad: {self._bad[frame_id]})" if frame_id in self._bad else ""
            raise StoreError(f"{self.path}: no frame {frame_id!r}{hint}") from None

    def _row_of(self, key: str | int) -> int:
        if isinstance(key, str):
            return self.row(key)
        self._file()
        row = int(key)
        if not 0 <= row < len(self._ids):
            raise StoreError(f"{self.path}: row {row} out of range (store has {len(self._ids)} frames)")
        return row

    def image_shape(self, key: str | int) -> tuple[int, int]:
        r = self._row_of(key)
        return int(self._shape[r, 0]), int(self._shape[r, 1])

    # -- data ---------------------------------------------------------------------------------
    def _slice(self, name: str, start: int, count: int) -> np.ndarray:
        try:
            return self._file()[name][start : start + count]
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path}: cannot read {name} ({exc})") from None

    def read_full_seg(self, key: str | int) -> np.ndarray:
        """(H, W) labels of one frame, in the smallest unsigned dtype that holds them."""
        r = self._row_of(key)
        h, w = self.image_shape(r)
        size = int(self._segsize[r])
        raw = self._slice("derived/full_seg", int(self._segstart[r]), h * w * size)
        return raw.view(np.dtype(f"<u{size}")).reshape(h, w)

    def read_key_objects(self, key: str | int) -> np.ndarray:
        r = self._row_of(key)
        return self._slice("derived/key_objects", int(self._kstart[r]), int(self._kcount[r]))

    def read_masks(self, key: str | int, indices=None) -> np.ndarray:
        """(N, H, W) bool masks of one frame, or only those at `indices` (e.g. its key objects)."""
        r = self._row_of(key)
        start, n = int(self._mstart[r]), int(self._mcount[r])
        boxes = self._slice("masks/box", start, n)
        starts = self._slice("masks/run_start", start, n)
        counts = self._slice("masks/run_count", start, n)
        if indices is not None:
            idx = np.asarray(indices, np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise StoreError(
                    f"{self.path}: frame {self._ids[r]!r} has {n} masks, asked for {idx.tolist()}"
                )
            boxes, starts, counts = boxes[idx], starts[idx], counts[idx]
        if len(boxes) == 0:
            return np.zeros((0, *self.image_shape(r)), bool)
        lo, hi = int(starts.min()), int((starts + counts).max())
        runs = self._slice("masks/runs", lo, hi - lo)
        return mask_codec.decode_masks(self.image_shape(r), boxes, runs, starts - lo, counts)

    def read(self, key: str | int) -> FrameMasks:
        """Everything about one frame (by id or row); touches only that frame's slices."""
        r = self._row_of(key)
        start, n = int(self._mstart[r]), int(self._mcount[r])
        return FrameMasks(
            frame_id=self._ids[r],
            image_shape=self.image_shape(r),
            sha256=self._sha[r].decode("ascii"),
            masks=self.read_masks(r),
            area=self._slice("masks/area", start, n),
            bbox=self._slice("masks/bbox", start, n),
            predicted_iou=self._slice("masks/predicted_iou", start, n),
            stability_score=self._slice("masks/stability_score", start, n),
            point_coords=self._slice("masks/point_coords", start, n),
            crop_box=self._slice("masks/crop_box", start, n),
            full_seg=self.read_full_seg(r),
            key_objects=self.read_key_objects(r),
        )

    def sha256(self, key: str | int) -> str:
        return self._sha[self._row_of(key)].decode("ascii")


def rewrite_derived(path: str | Path, cfg) -> Path:
    """Recompute full_seg and key objects of every frame from the stored masks with `cfg`
    (a pipeline.derive.DeriveConfig) and replace the store atomically; masks are copied as they are."""
    from pipeline.derive import derive

    path = Path(path)
    src = MaskStore(path)
    tmp = temp_path(path)
    try:
        with h5py.File(tmp, "w") as out:
            fin = src._file()
            for k, v in fin.attrs.items():
                out.attrs[k] = v
            for group in ("frames", "masks", "bad"):
                fin.copy(fin[group], out, name=group)
            out.attrs["derive_config"] = _json(cfg.to_dict())
            out.attrs["rederived"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            app = _Appender(out, _DERIVED_FIELDS)
            for r in range(len(src)):
                fm = src.read(r)
                full_seg, key_idx = derive(fm.masks, fm.bbox.astype(np.float64), cfg)
                checked = _check_derived(fm.frame_id, fm.image_shape, len(fm.area), full_seg, key_idx)
                _add_derived(app, *checked)
            app.flush()
        src.close()
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        src.close()
        tmp.unlink(missing_ok=True)
        raise
    return path

