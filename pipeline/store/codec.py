"""Mask encoding of the stores: run lengths of the mask inside its tight bounding box.

Each mask is its tight box (y, x, h, w) plus the row-major run lengths of the box's pixels, starting
with a run of zeros (possibly empty), as uint32. Chosen by measurement (benchmarks/bench_store.py:
8 real Sintel/judo frames, 115 SAM-like masks each, all masks of a frame decoded to (N, H, W) bool,
gzip-4 on top; masks only): 29 KiB and 8.2 ms CPU per frame, against 49 KiB / 7.8 ms for bitmaps
of the box (np.packbits), 66 KiB / 29 ms for whole-frame bitmaps, and 30 KiB / 45 ms for SAM/COCO's
whole-frame column-major RLE (it needs a transpose). Decoding writes only the box, and a mask
decodes on its own (key objects without the rest of the frame).

The tight box is the codec's own (h, w in pixels), kept apart from the record's `bbox`, whose
convention belongs to the segmenter (segment-anything's XYWH has w = x_max - x_min).
"""

from __future__ import annotations

import numpy as np

RUN_DTYPE = np.uint32  # a box of up to 2**32 pixels


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the smallest box holding every set pixel; (0, 0, 0, 0) for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))  # only the rows it spans
    return (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) int64 (y, x, h, w) tight boxes of an (N, H, W) stack, (0, 0, 0, 0) for empty masks.

    Two `any` reductions over the stack; the segment stage computes them once per frame and hands
    them to both `derive` and the store encoder.
    """
    n, H, W = masks.shape
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    nonempty = rows.any(axis=1)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = H - rows[:, ::-1].argmax(axis=1)
    x1 = W - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([y0, x0, y1 - y0, x1 - x0], axis=1).astype(np.int64)
    boxes[~nonempty] = 0
    return boxes


def encode_mask(
    mask: np.ndarray, box: tuple[int, int, int, int] | None = None
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """One (H, W) bool mask -> (tight box, run lengths of the box, zeros first).

    `box` (from `tight_boxes`) skips recomputing the extent; it must be the tight box.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    y, x, h, w = box = tight_box(mask) if box is None else tuple(int(v) for v in box)
    if h == 0:
        return box, np.zeros(0, RUN_DTYPE)
    flat = mask[y : y + h, x : x + w].ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat[0]:  # the first run counts zeros
        runs = np.concatenate([[0], runs])
    return box, runs.astype(RUN_DTYPE)


def decode_mask(shape: tuple[int, int], box, runs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of encode_mask; writes into `out` (H, W) bool when given (it must be all False)."""
    if out is None:
        out = np.zeros(shape, bool)
    y, x, h, w = (int(v) for v in box)
    if h and w:
        values = np.zeros(len(runs), bool)
        values[1::2] = True
        out[y : y + h, x : x + w] = np.repeat(values, runs.astype(np.intp)).reshape(h, w)
    return out


def decode_masks(shape: tuple[int, int], boxes: np.ndarray, runs: np.ndarray, starts: np.ndarray,
                 counts: np.ndarray) -> np.ndarray:
    """N masks as (N, H, W) bool; mask i's runs are runs[starts[i] : starts[i] + counts[i]]."""
    out = np.zeros((len(boxes), *shape), bool)
    for i in range(len(boxes)):
        s = int(starts[i])
        decode_mask(shape, boxes[i], runs[s : s + int(counts[i])], out[i])
    return out
