"""Mask encoding of the stores: run lengths of the mask inside its tight bounding box.

Each mask is its tight box (y, x, h, w) plus the row-major run lengths of the box's pixels, starting
with a run of zeros (possibly empty), as uint32. Chosen by measurement (benchmarks/bench_store.py:
43 real frames, 123 SAM-like masks each, the store's shuffle + gzip-6 on top, masks only, decoded
one mask at a time to (N, H, W) bool): 16.5 KiB and 5.3 ms CPU per frame, against 39.4 KiB / 4.7 ms
for bitmaps of the box (np.packbits), 51.2 KiB / 20 ms for whole-frame bitmaps, and 18.1 KiB / 26 ms
for SAM/COCO's whole-frame column-major RLE (it needs a transpose); pycocotools' compressed RLE
strings of the same masks take 69.8 KiB. `decode_masks` decodes a frame's masks together (2.8 ms
for the store's read_masks, most of it first-touch page faults of the output); decoding writes only
the boxes, and a mask decodes on its own (key objects without the rest of the frame).

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


def runs_of(flat: np.ndarray) -> np.ndarray:
    """Run lengths of a 1-D bool array, alternating 0-runs and 1-runs, starting with a 0-run (of length 0
    when the first value is set): the form of this store's masks and of SAM/COCO uncompressed RLE."""
    if flat.size == 0:
        return np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]]))
    return np.concatenate([[0], runs]) if flat[0] else runs


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
    return box, runs_of(mask[y : y + h, x : x + w].ravel()).astype(RUN_DTYPE)


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


DECODE_BATCH = 1 << 20  # pixels decoded per np.repeat in decode_masks: the scratch stays in cache


def _checked(boxes, starts, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = len(boxes)
    boxes = np.asarray(boxes, np.int64).reshape(n, 4)
    starts = np.asarray(starts, np.int64).reshape(n)
    counts = np.asarray(counts, np.int64).reshape(n)
    sizes = boxes[:, 2] * boxes[:, 3]
    if (counts < 0).any() or (sizes < 0).any():
        raise ValueError("negative run count or box size")
    return boxes, starts, counts, sizes


def _decode_flat(runs: np.ndarray, starts: np.ndarray, counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The box pixels of several masks, concatenated (mask i's are sizes[i] pixels), from one np.repeat:
    each mask's runs start with a 0-run, so a run's value is the parity of its position within its mask
    (whatever the parity of its run count)."""
    first = np.cumsum(counts) - counts  # where each mask's runs begin in the concatenation
    total = int(counts.sum())
    shift = np.repeat(starts - first, counts)  # concatenation position -> position in `runs`
    pos = np.arange(total, dtype=np.int64)
    if total and (shift == shift[0]).all():  # the usual case: the masks' runs are one contiguous slice
        lo = int(shift[0])
        if lo < 0 or lo + total > len(runs):
            raise ValueError("runs outside the run array")
        r = runs[lo : lo + total].astype(np.intp)
    else:
        src = pos + shift
        if total and (src.min() < 0 or src.max() >= len(runs)):
            raise ValueError("runs outside the run array")
        r = np.asarray(runs)[src].astype(np.intp)
    ends = np.zeros(total + 1, np.int64)
    np.cumsum(r, out=ends[1:])
    if (ends[first + counts] - ends[first] != sizes).any():
        raise ValueError("run lengths do not cover their masks' boxes")
    values = ((pos - np.repeat(first, counts)) & 1).astype(bool)  # 0-run, 1-run, ... per mask
    return np.repeat(values, r)


def decode_crops(boxes: np.ndarray, runs: np.ndarray, starts: np.ndarray, counts: np.ndarray
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """N masks' tight-box crops: (boxes (N, 4) int64 (y, x, h, w), crops[i] bool (h_i, w_i)), views
    into one array of the boxes' pixels, decoded together. Mask i's runs are
    runs[starts[i] : starts[i] + counts[i]]. ValueError when a mask's runs do not cover its box."""
    boxes, starts, counts, sizes = _checked(boxes, starts, counts)
    if len(boxes) == 0:
        return boxes, []
    flat = _decode_flat(runs, starts, counts, sizes)
    offs = (np.cumsum(sizes) - sizes).tolist()
    crops = [flat[o : o + h * w].reshape(h, w) for o, (_, _, h, w) in zip(offs, boxes.tolist(), strict=True)]
    return boxes, crops


def decode_masks(shape: tuple[int, int], boxes: np.ndarray, runs: np.ndarray, starts: np.ndarray,
                 counts: np.ndarray) -> np.ndarray:
    """N masks as (N, H, W) bool; mask i's runs are runs[starts[i] : starts[i] + counts[i]].

    Masks are decoded a batch at a time (about DECODE_BATCH box pixels per np.repeat, so the scratch
    array stays in cache and is reused, not page-faulted in), each crop copied into its box of a zeroed
    stack: np.zeros maps pages lazily, so the work is the boxes' pixels, not N x H x W.
    """
    boxes, starts, counts, sizes = _checked(boxes, starts, counts)
    n = len(boxes)
    out = np.zeros((n, *shape), bool)
    ends = np.cumsum(sizes)
    i = 0
    while i < n:  # masks i..j-1: at least one, then as many as fit in the batch
        j = max(i + 1, int(np.searchsorted(ends, ends[i] - sizes[i] + DECODE_BATCH, side="right")))
        flat = _decode_flat(runs, starts[i:j], counts[i:j], sizes[i:j])
        o = 0
        for k, (y, x, h, w) in enumerate(boxes[i:j].tolist(), start=i):
            if h and w:
                out[k, y : y + h, x : x + w] = flat[o : o + h * w].reshape(h, w)
            o += h * w
        i = j
    return out


ENCODE_BATCH_BYTES = 16 << 20  # crop pixels encode_crops concatenates at a time (it needs ~2x that)


def encode_crops(crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """encode_mask's run lengths of N box crops at once: (runs of all masks concatenated, count per mask).

    One pass over the crops' pixels concatenated: runs break at value changes and at mask starts, and a
    mask whose first pixel is set gets its leading empty 0-run. Equal to encode_mask crop by crop; the
    per-mask numpy calls were most of the segment stage's encoding time on small frames. Crops go in
    batches of ENCODE_BATCH_BYTES, so the temporaries stay bounded however large the frame's masks.
    """
    sizes = np.fromiter((c.size for c in crops), np.int64, len(crops))
    end = np.cumsum(sizes)
    runs, counts, i = [], [], 0
    while i < len(crops):
        j = max(i + 1, int(np.searchsorted(end, end[i] - sizes[i] + ENCODE_BATCH_BYTES, side="right")))
        r, c = _encode_batch(crops[i:j])
        runs.append(r)
        counts.append(c)
        i = j
    if len(runs) == 1:
        return runs[0], counts[0]
    return (np.concatenate(runs) if runs else np.zeros(0, RUN_DTYPE),
            np.concatenate(counts) if counts else np.zeros(0, np.int64))


def _encode_batch(crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    n = len(crops)
    sizes = np.fromiter((c.size for c in crops), np.int64, n)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, RUN_DTYPE), np.zeros(n, np.int64)
    flat = np.concatenate([np.asarray(c, bool).reshape(-1) for c in crops])
    starts = np.cumsum(sizes) - sizes
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    cuts = np.sort(np.concatenate([change, starts[sizes > 0]]))
    cuts = cuts[np.r_[True, cuts[1:] != cuts[:-1]]]  # both sorted: a merge, not np.union1d's hashing
    lengths = np.diff(np.append(cuts, total))
    owner = np.searchsorted(starts, cuts, side="right") - 1  # an empty mask shares its start with the next
    counts = np.bincount(owner, minlength=n).astype(np.int64)
    heads = np.searchsorted(cuts, starts[sizes > 0])  # each non-empty mask's first run
    lead = heads[flat[cuts[heads]]]  # ... that counts ones: a 0-run of length 0 goes before it
    counts[np.flatnonzero(sizes > 0)[flat[cuts[heads]]]] += 1
    return np.insert(lengths, lead, 0).astype(RUN_DTYPE), counts
