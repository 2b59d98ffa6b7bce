"""Reading a mask store one frame at a time, safely across fork and spawn (see schema)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.store import codec
from unsamflow.pipeline.store.integrity import StoreCorrupt
from unsamflow.pipeline.store.schema import _JSON_ATTRS, FORMAT_NAME, FORMAT_VERSION, FrameMasks

SCAN_BLOCK_BYTES = 64 << 20  # label-map bytes one block of MaskStore.scan reads at once (beyond one frame)

# Per-mask datasets, one row per mask (a frame's rows: mask_start .. + mask_count).
_MASK_ROWS = ("masks/area", "masks/bbox", "masks/predicted_iou", "masks/stability_score",
              "masks/point_coords", "masks/crop_box", "masks/box", "masks/run_start", "masks/run_count")


class MaskStore:
    """Read-only view of one store. Opens on first use and again after a fork (DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"mask store not found: {self.path}")
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # opened once per file handle (see _slice)
        self._block: dict[str, tuple[int, np.ndarray]] = {}  # name -> (first row, rows) during scan()

    # -- opening ------------------------------------------------------------------------------
    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = None  # a handle inherited through fork is never used (nor closed) here
            self._open()
        return self._h5

    def _open(self) -> None:
        try:
            # Stores are never modified in place (writers replace them whole), so readers need no
            # HDF5 file lock; locking fails on some cluster filesystems. No chunk cache: a frame's read
            # decompresses each of its chunks once anyway, and a worker may hold hundreds of stores open
            # (an Index keeps them), each with a dozen datasets open.
            h5 = h5py.File(self.path, "r", locking=False, rdcc_nbytes=0)
        except FileNotFoundError:
            raise StoreError(f"mask store not found: {self.path}") from None
        except OSError as exc:
            raise StoreCorrupt(f"{self.path}: not a readable HDF5 file ({exc})") from None
        except Exception as exc:  # damaged metadata surfaces as KeyError, RuntimeError, ... from h5py
            raise StoreCorrupt(f"{self.path}: corrupt mask store (HDF5: {type(exc).__name__}: {exc})"
                               ) from None
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
        except Exception as exc:  # whatever h5py raises on damaged metadata
            h5.close()
            raise StoreCorrupt(f"{self.path}: corrupt or incomplete mask store "
                               f"({type(exc).__name__}: {exc})") from None
        self._h5 = h5
        self._datasets = {}
        self._block = {}
        self._pid = os.getpid()

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._datasets = {}

    def __enter__(self) -> MaskStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable for spawn-started workers: the handle stays behind
        return {"path": self.path, "_h5": None, "_pid": None, "_datasets": {}}

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

    def frame_id(self, row: int) -> str:
        """The id of the frame stored at `row` (an index checks it before trusting its row)."""
        r = self._row_of(int(row))  # opens the file first
        return self._ids[r]

    def image_shape(self, key: str | int) -> tuple[int, int]:
        r = self._row_of(key)
        return int(self._shape[r, 0]), int(self._shape[r, 1])

    # -- data ---------------------------------------------------------------------------------
    def _slice(self, name: str, start: int, count: int) -> np.ndarray:
        block = self._block.get(name)
        if block is not None and block[0] <= start and start + count <= block[0] + len(block[1]):
            # A copy: a caller may change what it got, or keep it after the block is gone.
            return block[1][start - block[0] : start - block[0] + count].copy()
        h5 = self._file()
        try:
            ds = self._datasets.get(name)
            if ds is None:  # opening a dataset costs more than reading a frame's rows of it
                ds = self._datasets[name] = h5[name]
            return ds[start : start + count]
        except Exception as exc:  # a damaged chunk: OSError from the filter, or whatever h5py raises
            raise StoreCorrupt(f"{self.path}: corrupt: cannot read {name} ({type(exc).__name__}: {exc})"
                               ) from None

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

    def _mask_runs(self, r: int, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, runs, starts into runs, counts) of frame r's masks, or those at `indices`."""
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
            return boxes.reshape(0, 4), np.zeros(0, codec.RUN_DTYPE), starts, counts
        lo, hi = int(starts.min()), int((starts + counts).max())
        return boxes, self._slice("masks/runs", lo, hi - lo), starts - lo, counts

    def _decode(self, r: int, fn, *args):
        try:
            return fn(*args)
        except ValueError as exc:  # runs that do not fit their boxes: a damaged or mis-written store
            raise StoreCorrupt(f"{self.path}: corrupt masks of frame {self._ids[r]!r} ({exc})") from None

    def read_masks(self, key: str | int, indices=None) -> np.ndarray:
        """(N, H, W) bool masks of one frame, or only those at `indices` (e.g. its key objects)."""
        r = self._row_of(key)
        boxes, runs, starts, counts = self._mask_runs(r, indices)
        return self._decode(r, codec.decode_masks, self.image_shape(r), boxes, runs, starts, counts)

    def read_crops(self, key: str | int, indices=None):
        """One frame's masks (or those at `indices`) as `pipeline.masks.CropMasks`: each mask's tight
        box (y, x, h, w) and its crop, with no (N, H, W) stack; `derive` accepts it as it is."""
        from unsamflow.pipeline.masks import CropMasks  # not at import: pipeline.masks imports this package

        r = self._row_of(key)
        boxes, runs, starts, counts = self._mask_runs(r, indices)
        boxes, crops = self._decode(r, codec.decode_crops, boxes, runs, starts, counts)
        return CropMasks(self.image_shape(r), boxes, crops)

    def scan(self, block_frames: int = 64, block_bytes: int = SCAN_BLOCK_BYTES) -> Iterator[FrameMasks]:
        """Every frame in row order (as `read`), reading each dataset once per block of frames: a
        whole-store pass (verify) makes a dozen HDF5 reads per block instead of per frame, and
        decompresses each chunk once. A block holds at most `block_frames` frames and, beyond its
        first frame, `block_bytes` of label maps. A block that cannot be read is read frame by frame,
        so a damaged chunk is blamed on the frames it holds (their `read` raises), not on its block."""
        self._file()
        n = len(self._ids)
        seg_end = np.cumsum(self._shape[:, 0].astype(np.int64) * self._shape[:, 1] * self._segsize)
        a = 0
        while a < n:
            limit = (seg_end[a - 1] if a else 0) + block_bytes  # where frame a's label map starts, + bytes
            b = min(n, a + block_frames, max(a + 1, int(np.searchsorted(seg_end, limit, side="right"))))
            try:
                self._block = self._load_block(a, b)
            except StoreError:
                self._block = {}
            try:
                for r in range(a, b):
                    yield self.read(r)
            finally:
                self._block = {}
            a = b

    def _load_block(self, a: int, b: int) -> dict[str, tuple[int, np.ndarray]]:
        """Rows a..b-1's slice of every dataset a frame read touches: name -> (first index, data)."""
        m0, m1 = int(self._mstart[a]), int(self._mstart[b - 1] + self._mcount[b - 1])
        ranges = {name: (m0, m1) for name in _MASK_ROWS}
        pixels = self._shape[a:b, 0].astype(np.int64) * self._shape[a:b, 1]
        ranges["derived/full_seg"] = (int(self._segstart[a]),
                                      int((self._segstart[a:b] + pixels * self._segsize[a:b]).max()))
        ranges["derived/key_objects"] = (int(self._kstart[a]),
                                         int((self._kstart[a:b] + self._kcount[a:b]).max()))
        block = {name: (lo, self._slice(name, lo, hi - lo)) for name, (lo, hi) in ranges.items()}
        starts, counts = block["masks/run_start"][1], block["masks/run_count"][1]
        if len(starts):
            lo, hi = int(starts.min()), int((starts + counts).max())
            block["masks/runs"] = (lo, self._slice("masks/runs", lo, hi - lo))
        return block

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
        """Content hash of the frame's source image, as segmented."""
        r = self._row_of(key)  # opens the file first: self._sha exists only after that
        return self._sha[r].decode("ascii")

