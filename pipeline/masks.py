"""One frame's masks as tight-box crops: memory bounded by what the masks cover, not N x H x W.

A segmenter's records carry full-frame masks (bool H x W) or, like segment-anything's
`uncompressed_rle` output, run lengths. Stacking them costs N x H x W bytes: 458 masks of an
8000 x 8000 frame are 29 GB, which killed the worker (or raised MemoryError) and lost the whole shard.
`CropMasks` keeps each mask as the crop of its tight box, converts records one at a time, and counts
the bytes against a per-frame budget, so a frame that cannot fit is recorded bad with the numbers,
before it can take the worker down. `derive` and the store writer work on crops directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.store.codec import tight_box, tight_boxes

# Bytes per pixel a frame costs besides its masks: the RGB image (3), the label map and its renumbered
# copy (int32, 4 + 4), and one full-frame mask decoded at a time (1).
FRAME_BYTES_PER_PIXEL = 12


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def frame_fixed_bytes(shape: tuple[int, int]) -> int:
    """What one frame of this size costs before its first mask (see FRAME_BYTES_PER_PIXEL)."""
    return FRAME_BYTES_PER_PIXEL * int(shape[0]) * int(shape[1])


@dataclass
class CropMasks:
    """N masks of an (H, W) frame: boxes (N, 4) int64 tight (y, x, h, w), crops[i] bool (h_i, w_i)."""

    shape: tuple[int, int]
    boxes: np.ndarray
    crops: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.crops)

    @classmethod
    def from_stack(cls, masks: np.ndarray, boxes: np.ndarray | None = None) -> CropMasks:
        """Views into an (N, H, W) bool stack (no copy); `boxes`: its tight boxes when known."""
        n, H, W = masks.shape
        boxes = tight_boxes(masks) if boxes is None else np.asarray(boxes, np.int64).reshape(n, 4)
        crops = [masks[i, y : y + h, x : x + w] for i, (y, x, h, w) in enumerate(boxes)]
        return cls((H, W), boxes, crops)

    @classmethod
    def from_records(
        cls, records: Sequence[dict[str, Any]], shape: tuple[int, int], budget: int | None = None,
        frame_id: str = "",
    ) -> CropMasks:
        """Crops of the records' masks (bool arrays or uncompressed RLE), one record at a time.

        Raises BadFrameError naming the frame, its size, the mask count and the budget as soon as the
        frame's bytes (frame_fixed_bytes + crops so far) exceed `budget`.
        """
        shape = (int(shape[0]), int(shape[1]))
        fixed = frame_fixed_bytes(shape)
        boxes = np.zeros((len(records), 4), np.int64)
        crops: list[np.ndarray] = []
        used = fixed
        for i, rec in enumerate(records):
            box, crop = mask_crop(rec["segmentation"], shape)
            used += crop.nbytes
            if budget is not None and used > budget:
                raise BadFrameError(frame_id, over_budget(shape, len(records), i + 1, used, budget))
            boxes[i] = box
            crops.append(crop)
        if budget is not None and fixed > budget:
            raise BadFrameError(frame_id, over_budget(shape, len(records), len(records), fixed, budget))
        return cls(shape, boxes, crops)

    def to_stack(self) -> np.ndarray:
        """(N, H, W) bool: only for callers that know it fits."""
        out = np.zeros((len(self), *self.shape), bool)
        for i, (y, x, h, w) in enumerate(self.boxes):
            out[i, y : y + h, x : x + w] = self.crops[i]
        return out


def over_budget(shape: tuple[int, int], n: int, seen: int, used: int, budget: int) -> str:
    H, W = shape
    return (
        f"out of memory budget: a {H}x{W} (HxW) frame with {n} masks needs more than {fmt_bytes(budget)} "
        f"(the per-frame budget, --frame-memory): {fmt_bytes(used)} after {seen} of {n} masks "
        f"(stacked at full size they would take {fmt_bytes(n * H * W)}); raise --frame-memory, or make the "
        "segmenter return fewer masks or work on a downscaled frame"
    )


def is_rle(seg: Any) -> bool:
    """segment-anything's uncompressed RLE: {"size": [h, w], "counts": [...]}, column-major, zeros first."""
    return isinstance(seg, dict) and "size" in seg and "counts" in seg


def rle_area(seg: dict) -> int:
    return int(np.asarray(seg["counts"], np.int64)[1::2].sum())


def rle_decode(seg: dict) -> np.ndarray:
    """(h, w) bool from an uncompressed RLE (a transposed view of the column-major decoding)."""
    h, w = (int(v) for v in seg["size"])
    counts = np.asarray(seg["counts"], np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise BadInputError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w} = {h * w} pixels")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


def rle_crop(seg: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(tight box, its crop) of an uncompressed RLE, decoding only the box: work ~ the box, not H x W.

    Column-major runs: a 1-run within one column covers rows s % H .. (e - 1) % H; a 1-run that crosses
    into the next column covers the last row of its first column and the first row of its last, so
    the box then spans every row. On the 5017 graph masks of the 43 real frames in shared/data: 0.075 ms
    per mask against 0.11 ms for decoding the whole frame and cropping it (the rest is list conversion).
    """
    h, w = (int(v) for v in seg["size"])
    counts = np.asarray(seg["counts"], np.int64)
    if counts.ndim != 1 or counts.sum() != h * w or (counts < 0).any():
        raise BadInputError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w} = {h * w} pixels")
    ends = np.cumsum(counts)
    starts = ends - counts
    on = np.flatnonzero(counts[1::2]) * 2 + 1  # the non-empty 1-runs
    if on.size == 0:
        return (0, 0, 0, 0), np.zeros((0, 0), bool)
    s, e = starts[on], ends[on] - 1  # first and last pixel of each 1-run, column-major
    cs, ce = s // h, e // h
    x0, x1 = int(cs.min()), int(ce.max())
    if (ce > cs).any():
        y0, y1 = 0, h - 1
    else:
        y0, y1 = int((s % h).min()), int((e % h).max())
    # Decode columns x0..x1 only: clip the runs to that span, repeat, reshape, keep rows y0..y1.
    lo, hi = x0 * h, (x1 + 1) * h
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))
    part = np.minimum(ends[first:last], hi) - np.maximum(starts[first:last], lo)
    values = (np.arange(first, last) % 2).astype(bool)
    cols = np.repeat(values, part).reshape(x1 - x0 + 1, h)
    crop = np.ascontiguousarray(cols[:, y0 : y1 + 1].T)
    return (y0, x0, y1 - y0 + 1, x1 - x0 + 1), crop


def mask_crop(seg: Any, shape: tuple[int, int]) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(tight box, its crop as a new contiguous bool array) of a bool mask or an uncompressed RLE."""
    if is_rle(seg):
        if tuple(int(v) for v in seg["size"]) != tuple(shape):
            raise BadInputError(f"RLE mask of size {list(seg['size'])}, the frame is {list(shape)}")
        return rle_crop(seg)
    full = np.asarray(seg, bool)
    if full.shape != tuple(shape):
        raise BadInputError(f"mask of shape {full.shape}, the frame is {tuple(shape)}")
    y, x, h, w = box = tight_box(full)
    return box, np.ascontiguousarray(full[y : y + h, x : x + w])
