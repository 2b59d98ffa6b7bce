"""Where full_seg comes from at test time: the mask stores (by frame id) or a segmenter run on the spot.

Both are called as source(frame_id, image) -> H x W int64 labels. A store source is checked against
the whole dataset before any pair runs, so a store that misses a frame fails at once, naming it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadInputError, StoreError
from unsamflow.pipeline.store.index import INDEX_NAME, Index


class StoreSegs:
    """full_seg read from the stores of one directory (its index.json)."""

    def __init__(self, store_dir: str | Path):
        self.store_dir = Path(store_dir)
        self.index = Index.load(self.store_dir)
        self.prefix = ""  # added to the ids asked for: the input folder's place under the stores' root

    def source_root(self) -> Path | None:
        """The dataset root the stores were made from (as the pipeline recorded it), if known."""
        if not self.index.shards:
            return None
        from unsamflow.pipeline.store.reader import MaskStore

        with MaskStore(self.store_dir / self.index.shards[0]["file"]) as store:
            root = store.source.get("root")
        return Path(root) if root else None

    def align_to(self, folder: str | Path, frame_ids: Iterable[str]) -> None:
        """Match frames of `folder` (ids relative to it) to the stores by their path relative to the stores'
        root, so that masks made from `video/` serve `--input video/judo`. Raises naming the root the
        stores expect when `folder` is not under it and the ids do not match as they are."""
        ids = list(dict.fromkeys(frame_ids))
        if all(f in self.index for f in ids):
            self.prefix = ""
            return
        root = self.source_root()
        where = Path(folder).resolve()
        if root is not None:
            try:
                rel = where.relative_to(root.resolve()).as_posix()
            except ValueError:
                rel = None
            if rel is not None:
                prefix = "" if rel == "." else f"{rel}/"
                if all(prefix + f in self.index for f in ids):
                    self.prefix = prefix
                    return
        example = next(iter(self.index.frames), "?")
        raise StoreError(
            f"{self.store_dir / INDEX_NAME}: the stores were made from {root or 'another root'} (frame ids "
            f"like {example!r}) and do not cover the frames of {where}; give an input under that root or "
            "the masks made for this input"
        )

    def frame_id(self, path: str | Path) -> str:
        """The stores' id of an image file: its path relative to the stores' root."""
        root = self.source_root()
        where = Path(path).resolve()
        try:
            return where.relative_to(root.resolve()).as_posix() if root is not None else where.name
        except ValueError:
            raise StoreError(f"{self.store_dir / INDEX_NAME}: {path} is not under {root}, the folder the "
                             "stores were made from; give the masks made for this input") from None

    def check_covers(self, frame_ids: Iterable[str]) -> None:
        """Raise naming the first frame (and how many) the stores do not have."""
        missing = [self.prefix + f for f in dict.fromkeys(frame_ids) if self.prefix + f not in self.index]
        if missing:
            raise StoreError(
                f"{self.store_dir / INDEX_NAME}: the stores do not cover {len(missing)} frame(s) of the "
                f"dataset, first {missing[0]!r} (were the masks made for this dataset and root?)"
            )

    def __call__(self, frame_id: str, image: np.ndarray) -> np.ndarray:
        frame_id = self.prefix + frame_id
        store, row = self.index.store_for(frame_id)
        seg = np.asarray(store.read_full_seg(row)).astype(np.int64)
        if seg.shape != image.shape[:2]:
            raise StoreError(f"{store.path}: full_seg of frame "
                             f"{frame_id!r} is {seg.shape[1]}x{seg.shape[0]} but the frame is "
                             f"{image.shape[1]}x{image.shape[0]}")  # fmt: skip
        return seg

    def close(self) -> None:
        self.index.close()


class SegmenterSegs:
    """full_seg made on the spot by a segmenter (default: the pipeline's weight-free one), for samples
    that have no stores. Keeps the last few frames, since consecutive pairs share a frame."""

    def __init__(self, name: str | None = None, options: dict | None = None, cache: int = 4):
        from unsamflow.pipeline.segmenters import DEFAULT_SEGMENTER, SegmenterSpec, build_segmenter

        self.spec = SegmenterSpec(name or DEFAULT_SEGMENTER, options or {})
        self.segmenter = build_segmenter(self.spec)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._size = cache

    def check_covers(self, frame_ids: Iterable[str]) -> None:
        """A segmenter covers every frame."""

    def __call__(self, frame_id: str, image: np.ndarray) -> np.ndarray:
        from unsamflow.pipeline.derive import full_segmentation
        from unsamflow.pipeline.segment import records_to_arrays

        if frame_id in self._cache:
            return self._cache[frame_id]
        masks, _ = records_to_arrays(self.segmenter(image), image.shape[:2])
        seg = full_segmentation(masks).astype(np.int64)
        self._cache[frame_id] = seg
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return seg

    def close(self) -> None:
        self._cache.clear()


def open_segs(masks: str | Path | None, segment: bool = False) -> StoreSegs | SegmenterSegs | None:
    """The seg source a command asked for: --masks DIR, or the default segmenter with --segment."""
    if masks is not None and segment:
        raise BadInputError("give either --masks STORES or --segment, not both")
    if masks is not None:
        return StoreSegs(masks)
    return SegmenterSegs() if segment else None
