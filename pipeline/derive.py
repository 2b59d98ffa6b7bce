"""Full segmentation and key objects from one frame's raw masks (method.md section 1).

Both products are pure functions of the masks and their boxes, so `derive` can be re-run with new
thresholds without re-running the segmenter.

Conventions:
- `masks` is (N, H, W) bool, in the order the segmenter returned them (N may be 0);
- `bboxes` is (N, 4) XYWH as in the records (segment-anything's convention: w = x_max - x_min);
- ties in area are broken by input order: the stable largest-first order keeps equal-area masks in
  their input order, and a pixel inside several smallest masks of equal area takes the one that comes
  first in the input (as `argmin` over the ordered stack does in the reference).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadInputError, from_dict_strict
from unsamflow.pipeline.masks import CropMasks


@dataclass(frozen=True)
class DeriveConfig:
    """Key-object thresholds (reference values, tuned for KITTI-sized frames of about 375 x 1242).

    A mask is a key object when min_h <= bbox h <= max_h, min_w <= bbox w <= max_w,
    area / (h * w) >= min_fill, and at least min_overlaps masks (itself included) intersect it.
    """

    min_h: int = 50
    max_h: int = 200
    min_w: int = 50
    max_w: int = 300
    min_fill: float = 0.5
    min_overlaps: int = 6

    def __post_init__(self) -> None:
        for name in ("min_h", "max_h", "min_w", "max_w", "min_overlaps"):
            if getattr(self, name) < 0:
                raise BadInputError(f"derive config: {name} must be >= 0, got {getattr(self, name)}")
        if self.min_h > self.max_h:
            raise BadInputError(f"derive config: min_h ({self.min_h}) is larger than max_h ({self.max_h})")
        if self.min_w > self.max_w:
            raise BadInputError(f"derive config: min_w ({self.min_w}) is larger than max_w ({self.max_w})")
        if not 0.0 <= self.min_fill <= 1.0:
            raise BadInputError(f"derive config: min_fill must be in [0, 1], got {self.min_fill}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeriveConfig:
        """Missing keys take the defaults; unknown keys are an error (a typo must not pass silently)."""
        return from_dict_strict(cls, data, "derive config")


def full_segmentation(masks: np.ndarray | CropMasks, _ext: _Extents | None = None) -> np.ndarray:
    """One label per pixel: the smallest mask containing it; (H, W) int32, labels 0..K-1.

    Masks covering the whole frame are dropped; labels are positions in the largest-first order
    (background 0), then the labels that occur are renumbered consecutively keeping their order. As in the
    reference, when no pixel is left uncovered the largest occurring mask takes label 0.
    """
    ext = _ext or _Extents(_check_masks(masks))
    H, W = ext.shape
    kept = np.flatnonzero(ext.areas < H * W)
    desc = kept[np.argsort(-ext.areas[kept], kind="stable")]  # label p + 1 belongs to masks[desc[p]]
    # Priority: smallest area first; equal areas in largest-first (= input) order.
    prio = np.lexsort((np.arange(len(desc)), ext.areas[desc]))
    # Paint from the lowest priority to the highest, so each pixel ends with its highest-priority mask.
    # One vectorised write per mask, inside its own extent only: SAM-style masks are mostly small, and
    # this measured several times faster than whole-frame writes or an argmax over the (N, H*W) stack.
    labels = np.zeros((H, W), np.int32)
    for p in prio[::-1]:
        i = desc[p]
        np.copyto(labels[ext.window(i)], p + 1, where=ext.crops[i])
    occurs = np.bincount(labels.ravel(), minlength=len(desc) + 1) > 0
    relabel = (np.cumsum(occurs) - 1).astype(np.int32)
    return relabel[labels]


def key_objects(
    masks: np.ndarray | CropMasks, bboxes: np.ndarray, cfg: DeriveConfig | None = None,
    _ext: _Extents | None = None,
) -> np.ndarray:
    """Indices (int64, ascending) into `masks` of the masks suitable to cut and paste as moving objects."""
    cfg = cfg or DeriveConfig()
    ext = _ext or _Extents(_check_masks(masks))
    n = ext.n
    bboxes = np.asarray(bboxes, dtype=np.float64)
    if bboxes.size == 0:
        bboxes = bboxes.reshape(0, 4)
    if bboxes.shape != (n, 4):
        raise BadInputError(f"derive: bboxes must be ({n}, 4) XYWH to match the masks, got {bboxes.shape}")
    w, h = bboxes[:, 2], bboxes[:, 3]
    areas = ext.areas
    box = h * w
    # A degenerate box (h or w of 0, possible only with min_h or min_w at 0) counts as filled.
    fill = np.divide(areas, box, out=np.full(n, np.inf), where=box > 0)
    candidates = np.flatnonzero(
        (h >= cfg.min_h) & (h <= cfg.max_h) & (w >= cfg.min_w) & (w <= cfg.max_w) & (fill >= cfg.min_fill)
    )
    if len(candidates) == 0 or cfg.min_overlaps == 0:
        return candidates.astype(np.int64)
    overlaps = _overlap_counts(candidates, ext)
    return candidates[overlaps >= cfg.min_overlaps].astype(np.int64)


def derive(
    masks: np.ndarray | CropMasks, bboxes: np.ndarray, cfg: DeriveConfig | None = None,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(full_seg (H, W) int32, key-object indices int64) for one frame.

    `masks`: an (N, H, W) bool stack, or CropMasks (each mask as its tight-box crop), which is what the
    segment stage passes so that a frame never needs N x H x W bytes. `boxes`: the stack's tight
    boxes from `codec.tight_boxes`, when the caller has them already.
    """
    masks = _check_masks(masks)
    ext = _Extents(masks, boxes)  # shared: computing extents is a pass over every mask
    return full_segmentation(masks, ext), key_objects(masks, bboxes, cfg, ext)


class _Extents:
    """Per-mask pixel extents (tight boxes), crops (bool, the extent's pixels) and areas.

    Everything works inside extents: `count_nonzero(axis=...)` over the whole (N, H*W) stack is ~30x
    slower, and crops are all a frame needs to hold (see pipeline.masks).
    """

    def __init__(self, masks: np.ndarray | CropMasks, boxes: np.ndarray | None = None):
        if not isinstance(masks, CropMasks):
            masks = CropMasks.from_stack(masks, boxes)
        self.shape = masks.shape
        self.n = n = len(masks)
        self.crops = masks.crops
        b = np.asarray(masks.boxes, np.int64).reshape(n, 4)
        self.y0, self.x0 = b[:, 0], b[:, 1]
        self.y1, self.x1 = self.y0 + b[:, 2], self.x0 + b[:, 3]
        self.areas = np.array([np.count_nonzero(c) for c in self.crops], dtype=np.int64).reshape(n)

    def window(self, i: int) -> tuple[slice, slice]:
        return slice(self.y0[i], self.y1[i]), slice(self.x0[i], self.x1[i])

    def part(self, i: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Mask i's pixels in the frame window [y0, y1) x [x0, x1), which lies inside its extent."""
        return self.crops[i][y0 - self.y0[i] : y1 - self.y0[i], x0 - self.x0[i] : x1 - self.x0[i]]


OVERLAP_BATCH_BYTES = 16 << 20  # one stack of _overlap_counts: meeting masks x the candidate's box
# Beyond this box size a stack costs more than it saves: each meeting mask would fill the whole box
# (with the default key-object limits, at most 200 x 300 = 60,000 pixels, it never applies).
OVERLAP_STACK_MAX_PIXELS = 1 << 18


def _overlap_counts(candidates: np.ndarray, ext: _Extents) -> np.ndarray:
    """Per candidate, how many masks (itself included) share at least one pixel with it.

    Only masks whose extent meets the candidate's extent can intersect it; each of those is ANDed with
    the candidate inside the two extents' intersection.
    """
    counts = np.zeros(len(candidates), np.int64)
    for j, c in enumerate(candidates):
        if ext.areas[c] == 0:
            continue
        meets = np.flatnonzero(
            (ext.y0 < ext.y1[c]) & (ext.y1 > ext.y0[c]) & (ext.x0 < ext.x1[c]) & (ext.x1 > ext.x0[c])
            & (ext.areas > 0)
        )
        # Paste the meeting masks' parts of the candidate's extent into one stack and AND it with the
        # candidate once (a slice assignment per mask, not a slice, an AND and an any() per mask), in
        # batches of at most OVERLAP_BATCH_BYTES, so a large candidate box cannot take N times its size.
        cy0, cx0 = int(ext.y0[c]), int(ext.x0[c])
        cand = ext.crops[c]
        y0, y1 = np.maximum(ext.y0[meets], cy0), np.minimum(ext.y1[meets], ext.y1[c])
        x0, x1 = np.maximum(ext.x0[meets], cx0), np.minimum(ext.x1[meets], ext.x1[c])
        parts = list(zip(meets.tolist(), y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), strict=True))
        if cand.size > OVERLAP_STACK_MAX_PIXELS:  # a big box: AND each overlap window alone, not the box
            counts[j] = sum(bool(np.any(ext.part(m, a, b, d, e) & ext.part(c, a, b, d, e)))
                            for m, a, b, d, e in parts)
            continue
        step = max(1, OVERLAP_BATCH_BYTES // max(1, cand.size))
        for lo in range(0, len(parts), step):
            batch = parts[lo : lo + step]
            stack = np.zeros((len(batch), *cand.shape), bool)
            for k, (m, a, b, d, e) in enumerate(batch):
                stack[k, a - cy0 : b - cy0, d - cx0 : e - cx0] = ext.part(m, a, b, d, e)
            stack &= cand
            counts[j] += int(stack.reshape(len(batch), -1).any(axis=1).sum())
    return counts


def _check_masks(masks: np.ndarray | CropMasks) -> np.ndarray | CropMasks:
    if isinstance(masks, CropMasks):
        return masks
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise BadInputError(f"derive: masks must be (N, H, W), got shape {masks.shape}")
    if masks.dtype != bool:
        raise BadInputError(f"derive: masks must be bool, got {masks.dtype}")
    return masks
