"""Mask encoding of the stores: each mask as the bit-packed bitmap of its tight bounding box.

Chosen by measurement (benchmarks/bench_store.py, 8 Sintel/judo frames, ~120 SAM-like masks
each, gzip 4 on top in the store): 53 KiB and ~8 ms per frame to decode every mask, against
41 KiB / 13 ms for SAM-style uncompressed RLE counts and 70 KiB / 27 ms for full-frame bitmaps.
Cropping wins because most masks are small: their bitmaps are a few hundred bytes, and
decoding writes only the box. A mask also decodes on its own (key objects without the rest).

The tight box is the codec's own (y, x, h, w with h, w in pixels). It is kept apart from the
record's `bbox`, whose convention belongs to the segmenter (SAM's XYWH has w = x_max - x_min).
"""

from __future__ import annotations

import numpy as np


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y, x, h, w) of the smallest box holding every set pixel; (0, 0, 0, 0) for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))


def packed_nbytes(h: int, w: int) -> int:
    """Bytes of one packed (h, w) bitmap."""
    return (h * w + 7) // 8


def encode_mask(mask: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """One (H, W) bool mask -> (tight box, uint8 packed bits of the box, row-major)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    y, x, h, w = box = tight_box(mask)
    return box, np.packbits(mask[y : y + h, x : x + w])


def encode_masks(masks: list[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N masks -> (boxes (N, 4) int32 y x h w, payload uint8 (all bitmaps back to back),
    offsets (N,) int64 of each bitmap in the payload)."""
    boxes = np.zeros((len(masks), 4), np.int32)
    offsets = np.zeros(len(masks), np.int64)
    parts = []
    pos = 0
    for i, m in enumerate(masks):
        boxes[i], bits = encode_mask(m)
        offsets[i] = pos
        parts.append(bits)
        pos += bits.size
    payload = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return boxes, payload, offsets


def decode_mask(shape: tuple[int, int], box: np.ndarray, bits: np.ndarray, out: np.ndarray | None = None):
    """Inverse of encode_mask; writes into `out` (H, W) bool when given (it must be all False)."""
    if out is None:
        out = np.zeros(shape, bool)
    y, x, h, w = (int(v) for v in box)
    n = h * w
    if n:
        out[y : y + h, x : x + w] = np.unpackbits(bits[: packed_nbytes(h, w)], count=n).reshape(h, w)
    return out


def decode_masks(
    shape: tuple[int, int], boxes: np.ndarray, payload: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """N masks as (N, H, W) bool from their boxes, payload and offsets into the payload."""
    out = np.zeros((len(boxes), *shape), bool)
    for i in range(len(boxes)):
        h, w = int(boxes[i, 2]), int(boxes[i, 3])
        start = int(offsets[i])
        decode_mask(shape, boxes[i], payload[start : start + packed_nbytes(h, w)], out[i])
    return out
