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
from itertools import chain
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.store.codec import runs_of, tight_box, tight_boxes

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
        if records and all(is_rle(r["segmentation"]) for r in records):
            return cls._from_rle(records, shape, budget, frame_id)
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

    @classmethod
    def _from_rle(cls, records: Sequence[dict[str, Any]], shape: tuple[int, int], budget: int | None,
                  frame_id: str) -> CropMasks:
        """All masks run-length (SAM's compact output): boxes first, the budget checked on their sizes
        before a crop is decoded, then every crop at once (rle_crops)."""
        fixed = frame_fixed_bytes(shape)
        if budget is not None and fixed > budget:
            raise BadFrameError(frame_id, over_budget(shape, len(records), 0, fixed, budget))
        try:
            boxes, crops = rle_crops([r["segmentation"] for r in records], shape,
                                     None if budget is None else budget - fixed)
        except _OverBudget as exc:
            raise BadFrameError(frame_id, over_budget(shape, len(records), exc.index + 1, fixed + exc.used,
                                                      budget)) from None
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


def rle_encode(mask: np.ndarray) -> dict:
    """(h, w) bool -> segment-anything's uncompressed RLE (column-major, zeros first; counts a list)."""
    mask = np.asarray(mask, bool)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])],
            "counts": runs_of(mask.ravel(order="F")).tolist()}


def rle_decode(seg: dict) -> np.ndarray:
    """(h, w) bool from an uncompressed RLE (a transposed view of the column-major decoding)."""
    h, w = (int(v) for v in seg["size"])
    counts = np.asarray(seg["counts"], np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise BadInputError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w} = {h * w} pixels")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


class _OverBudget(Exception):
    """rle_crops: mask `index` brings the crops to `used` bytes, over the budget."""

    def __init__(self, index: int, used: int):
        super().__init__(index, used)
        self.index, self.used = index, used


# Bytes of full columns one batch of rle_crops may decode at a time (it decodes whole columns of each
# mask's box, then keeps the box's rows), and runs one batch may hold (~90 bytes of temporaries each):
# they bound the temporary memory however large the frame or noisy its masks.
RLE_BATCH_BYTES = 32 << 20
RLE_BATCH_RUNS = 1 << 18


def rle_crops(segs: Sequence[dict], shape: tuple[int, int], budget: int | None = None
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(tight boxes (N, 4) (y, x, h, w), crops) of N uncompressed RLE masks of one frame.

    `budget`: bytes the crops may take; over it, _OverBudget(i, bytes) is raised as soon as the boxes of
    a batch show it, before that batch's crops are decoded.

    Column-major runs: a 1-run within one column covers rows s % H .. (e - 1) % H; a 1-run that crosses
    into the next column covers the last row of its first column and the first row of its last, so
    the box then spans every row. Boxes come from run arithmetic over a batch of masks at once and
    crops from one np.repeat over their boxes' columns only, so the work is about the boxes' pixels with
    a few numpy calls per mask (per-mask decoding spent most of a small frame's time in call overhead:
    bench_scaling's machinery rows). Batches hold at most RLE_BATCH_RUNS runs and RLE_BATCH_BYTES of
    columns, which bounds the temporaries (~90 bytes per run) however noisy or large the masks.
    """
    H, W = (int(shape[0]), int(shape[1]))
    n = len(segs)
    for i, seg in enumerate(segs):
        if [int(v) for v in seg["size"]] != [H, W]:
            raise BadInputError(f"RLE mask {i} of size {list(seg['size'])}, the frame is {[H, W]}")
        if not isinstance(seg["counts"], (list, tuple, np.ndarray)):
            raise BadInputError(f"RLE mask {i}: counts must be a list of run lengths, got "
                                f"{type(seg['counts']).__name__} (decode compressed COCO RLE strings first)")
    lens = np.fromiter((len(seg["counts"]) for seg in segs), np.int64, n)
    ends_at = np.cumsum(lens)
    boxes = np.zeros((n, 4), np.int64)
    crops: list[np.ndarray] = []
    used, i = 0, 0
    while i < n:  # masks i..j-1: at least one, then up to RLE_BATCH_RUNS runs
        j = max(i + 1, int(np.searchsorted(ends_at, ends_at[i] - lens[i] + RLE_BATCH_RUNS, side="right")))
        boxes[i:j], batch = _rle_batch(segs[i:j], lens[i:j], H, W, i, budget, used)
        used += int((boxes[i:j, 2] * boxes[i:j, 3]).sum())
        crops += batch
        i = j
    return boxes, crops


def _rle_batch(segs: Sequence[dict], lens: np.ndarray, H: int, W: int, base: int, budget: int | None,
               used_before: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """rle_crops for one batch of masks (`base`: the index of its first mask, for messages;
    `used_before`: crop bytes of the batches before it)."""
    n = len(segs)
    if any(isinstance(seg["counts"], np.ndarray) for seg in segs):  # iterating numpy scalars is slow
        counts = np.concatenate([np.asarray(seg["counts"], np.int64).reshape(-1) for seg in segs])
    else:
        counts = np.fromiter(chain.from_iterable(seg["counts"] for seg in segs), np.int64, int(lens.sum()))
    first = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(n), lens)  # mask of each run
    sums = np.bincount(owner, weights=counts, minlength=n) if counts.size else np.zeros(n)
    wrong = np.flatnonzero((sums != H * W) | (lens == 0))
    if counts.size and (counts < 0).any():
        wrong = np.union1d(wrong, owner[counts < 0])
    if wrong.size:
        i = int(wrong[0])
        c = counts[first[i] : first[i] + lens[i]]
        raise BadInputError(f"RLE mask {base + i}: counts must be non-negative and sum to {H}x{W} = {H * W} "
                            f"pixels, they sum to {int(c.sum())}")
    ends = np.cumsum(counts) - owner * (H * W)  # end of each run within its own mask (exclusive)
    starts = ends - counts
    ones = ((np.arange(counts.size) - first[owner]) % 2).astype(bool)  # 1-runs: odd places in a mask
    on = ones & (counts > 0)
    boxes = np.zeros((n, 4), np.int64)
    if on.any():
        m, s, e = owner[on], starts[on], ends[on] - 1
        cs, ce = s // H, e // H
        at = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])  # runs are in mask order: group starts
        have = m[at]
        x0, x1 = np.minimum.reduceat(cs, at), np.maximum.reduceat(ce, at)
        spans = np.maximum.reduceat((ce > cs).astype(np.int8), at) > 0
        y0 = np.where(spans, 0, np.minimum.reduceat(s % H, at))
        y1 = np.where(spans, H - 1, np.maximum.reduceat(e % H, at))
        boxes[have] = np.stack([y0, x0, y1 - y0 + 1, x1 - x0 + 1], axis=1)
    if budget is not None:
        used = used_before + np.cumsum(boxes[:, 2] * boxes[:, 3])
        over = np.flatnonzero(used > budget)
        if over.size:
            raise _OverBudget(base + int(over[0]), int(used[over[0]]))
    # Decode every box's columns: clip each run to its mask's column span, repeat, cut per mask.
    lo = boxes[:, 1] * H
    col_bytes = boxes[:, 3] * H
    col_end = np.cumsum(col_bytes)
    crops: list[np.ndarray] = []
    i = 0
    while i < n:  # masks i..j-1: at least one, then up to RLE_BATCH_BYTES of columns
        limit = col_end[i] - col_bytes[i] + RLE_BATCH_BYTES
        j = max(i + 1, int(np.searchsorted(col_end, limit, side="right")))
        r0, r1 = int(first[i]), int(first[j - 1] + lens[j - 1])
        own = owner[r0:r1]
        a, b = lo[own], lo[own] + col_bytes[own]
        part = np.clip(np.minimum(ends[r0:r1], b) - np.maximum(starts[r0:r1], a), 0, None)
        flat = np.repeat(ones[r0:r1], part)
        off = 0
        for k in range(i, j):
            y, _, h, w = (int(v) for v in boxes[k])
            size = int(col_bytes[k])
            crops.append(np.ascontiguousarray(flat[off : off + size].reshape(w, H)[:, y : y + h].T))
            off += size
        i = j
    return boxes, crops


def rle_crop(seg: dict) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """(tight box, its crop) of one uncompressed RLE mask (see rle_crops)."""
    boxes, crops = rle_crops([seg], (int(seg["size"][0]), int(seg["size"][1])))
    return tuple(int(v) for v in boxes[0]), crops[0]


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
