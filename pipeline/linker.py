"""Linking one sequence's masks into tracks: propagate, match by IoU, survive short gaps.

For each frame t+1 of a sequence, every live track has an estimate of its object's pixels in the frame
of the last image seen (its mask where it was last matched, or that mask carried along since). The
estimates are carried to frame t+1 by a backward flow (frame t+1 -> the last image: pixel p of t+1 takes
the estimate's value at p + flow(p), rounded), then matched one-to-one to frame t+1's masks by IoU with
an optimal assignment (scipy's `linear_sum_assignment`, Hungarian); a pair below `min_iou` is no match.
A matched track takes the new mask as its estimate; an unmatched one keeps its carried estimate and ends
after more than `gap` frames in a row without a match (so gap 0: a track ends at its first miss); an
unmatched mask starts a new track. The "iou" linker is the same with zero flow (IoU at the same place).

Estimates and masks are sparse rows over the frame's pixels, so carrying K estimates is one sparse
gather and the K x N intersections one sparse product: the cost is the masks' pixels, not K x N x H x W.
Bad frames (no masks, no image) count as frames in which every track misses. Everything is
deterministic: the same masks and flow give the same track numbers (new tracks numbered in frame order,
then mask order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from unsamflow.pipeline.errors import BadInputError, from_dict_strict
from unsamflow.pipeline.masks import CropMasks

LINKERS = ("flow", "iou", "sam2")
# A flow: (image at t+1, image where the estimates are) -> (H, W, 2) float displacement of t+1's pixels.
FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# A carrier: (estimates (K, H*W) CSR in the old frame, old image, new image) -> the estimates in the new
# frame, (K, H*W) CSR of ones (how the sam2 linker carries masks: pipeline.sam2_linker).
CarryFn = Callable[[sp.csr_matrix, np.ndarray, np.ndarray], sp.csr_matrix]


@dataclass(frozen=True)
class TrackConfig:
    """How tracks are made (stored with them, so a store says how its tracks came about).

    linker: "flow" (estimates carried by optical flow), "iou" (no flow: IoU at the same place) or
    "sam2" (SAM 2's video predictor carries them, see pipeline.sam2_linker); flow: the flow of the
    "flow" linker ("dis": OpenCV DIS, medium preset, or a plug-in `module:factory`); gap: frames a track
    may go unmatched and still continue; min_iou: the least IoU that counts as a match.
    """

    linker: str = "flow"
    flow: str = "dis"
    gap: int = 1
    min_iou: float = 0.3
    options: dict | None = None  # the flow's or linker's own options (e.g. sam2's checkpoint)

    def __post_init__(self) -> None:
        if self.linker not in LINKERS:
            raise BadInputError(f"--linker must be one of {', '.join(LINKERS)}, got {self.linker!r}")
        if self.gap < 0:
            raise BadInputError(f"--gap must be >= 0 (frames a track may be unmatched), got {self.gap}")
        if not 0.0 < self.min_iou <= 1.0:
            raise BadInputError(f"--min-iou must be in (0, 1], got {self.min_iou}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(self.options or {})
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackConfig:
        return from_dict_strict(cls, data, "track config")


def pixel_rows(masks: CropMasks) -> sp.csr_matrix:
    """(N, H*W) CSR of ones (int32, so products count pixels without a cast): row i holds the flat pixel
    indices of mask i, sorted."""
    H, W = masks.shape
    indices, counts = [], []
    for (y, x, _, _), crop in zip(np.asarray(masks.boxes, np.int64).reshape(-1, 4), masks.crops, strict=True):
        ys, xs = np.nonzero(crop)
        indices.append((ys + y) * W + (xs + x))
        counts.append(len(ys))
    idx = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    out = sp.csr_matrix((np.ones(len(idx), np.int32), idx, indptr), shape=(len(counts), H * W))
    out.has_sorted_indices = True
    return out


def source_pixels(flow: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """Flat index, per pixel p of the new frame, of the pixel p + flow(p) (rounded, clipped to the frame)
    in the frame the estimates live in; None for no flow (the identity)."""
    if flow is None:
        return None
    H, W = shape
    flow = np.asarray(flow, np.float32)
    if flow.shape != (H, W, 2):
        raise BadInputError(f"flow of shape {flow.shape} for a frame of {H}x{W} (expected ({H}, {W}, 2))")
    ys, xs = np.mgrid[0:H, 0:W]
    sx = np.clip(np.rint(xs + flow[..., 0]), 0, W - 1).astype(np.int64)
    sy = np.clip(np.rint(ys + flow[..., 1]), 0, H - 1).astype(np.int64)
    return (sy * W + sx).ravel()


def match(estimates: sp.csr_matrix, masks: sp.csr_matrix, src: np.ndarray | None, min_iou: float
          ) -> list[tuple[int, int]]:
    """Optimal one-to-one (estimate, mask) pairs by IoU, each with IoU >= min_iou, in estimate order.

    The estimates are in the old frame; `src` (see source_pixels) carries them to the masks' frame. The
    estimates themselves are not moved: each mask pixel p is looked up at src[p] instead (a new pixel
    lies in a carried estimate exactly when its source does), so the intersections are one sparse
    product and a carried estimate's area is the sum of its pixels' counts in src.
    """
    if estimates.shape[0] == 0 or masks.shape[0] == 0:
        return []
    if src is None:
        inter = (estimates @ masks.T).toarray().astype(np.float64)
        a = np.asarray(estimates.sum(axis=1), np.float64)
    else:
        moved = sp.csr_matrix((masks.data, src[masks.indices], masks.indptr), shape=masks.shape)
        inter = (estimates @ moved.T).toarray().astype(np.float64)
        a = (estimates @ np.bincount(src, minlength=masks.shape[1]).astype(np.float64))[:, None]
    b = np.asarray(masks.sum(axis=1), np.float64).reshape(1, -1)
    a = np.asarray(a, np.float64).reshape(-1, 1)
    union = a + b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]


def link_sequence(
    frames: Iterable[tuple[CropMasks | None, np.ndarray | None]],
    flow: FlowFn | None,
    cfg: TrackConfig,
    carry: CarryFn | None = None,
) -> list[np.ndarray]:
    """Local track numbers (int64, 0..T-1) of each frame's masks, in order.

    `frames` yields (masks, image) per frame in sequence order: masks None for a bad frame; the RGB image
    is needed only with a `flow` (read lazily by the caller, so a long sequence never sits in memory).
    `flow(new, old)` gives the displacement from new-frame pixels to the old frame; None links by IoU at
    the same place. `carry`, instead of a flow, moves the estimates to the new frame itself.
    """
    out: list[np.ndarray] = []
    est = None  # (K, H*W) CSR: live tracks' pixels in the frame of `ref`
    ids = np.zeros(0, np.int64)  # track number of each estimate row
    misses = np.zeros(0, np.int64)
    ref: np.ndarray | None = None  # image the estimates are in
    shape: tuple[int, int] | None = None
    next_id = 0
    for masks, image in frames:
        if masks is None:  # a bad frame: every live track misses it
            out.append(np.zeros(0, np.int64))
            misses = misses + 1
            keep = misses <= cfg.gap
            est = est[np.flatnonzero(keep)] if est is not None else None
            ids, misses = ids[keep], misses[keep]
            continue
        if shape is not None and tuple(masks.shape) != shape:
            # A size change within a sequence is a bad pair (the index records it): pixels do not
            # correspond across it, so every live track ends there and new ones start.
            est, ref = None, None
            ids, misses = np.zeros(0, np.int64), np.zeros(0, np.int64)
        shape = tuple(masks.shape)
        rows = pixel_rows(masks)
        img = image if (flow is not None or carry is not None) else None
        src = None
        if est is None:
            est = sp.csr_matrix((0, shape[0] * shape[1]), dtype=np.int32)
        if est.shape[0]:
            if carry is not None and ref is not None:
                est = carry(est, ref, img)  # now in the new frame: matched in place
            elif flow is not None and ref is not None:
                src = source_pixels(flow(img, ref), shape)
            pairs = match(est, rows, src, cfg.min_iou)
        else:
            pairs = []
        track = np.full(len(masks), -1, np.int64)
        matched_est = np.zeros(len(ids), bool)
        for e, m in pairs:
            track[m] = ids[e]
            matched_est[e] = True
        new = np.flatnonzero(track < 0)
        track[new] = np.arange(next_id, next_id + len(new))
        next_id += len(new)
        out.append(track)
        # Next estimates: matched and new tracks take their masks; the others keep what was carried,
        # while they have missed at most `gap` frames and still cover a pixel.
        miss = np.flatnonzero(~matched_est)
        miss = miss[misses[miss] + 1 <= cfg.gap]
        carried = est[miss] if src is None else est[miss][:, src]  # only unmatched tracks are carried
        carried.eliminate_zeros()
        alive = np.asarray(carried.getnnz(axis=1)) > 0
        order = np.argsort(track, kind="stable")  # masks in track-number order, for a stable layout
        est = sp.vstack([rows[order], carried[np.flatnonzero(alive)]], format="csr")
        ids = np.concatenate([track[order], ids[miss[alive]]])
        misses = np.concatenate([np.zeros(len(order), np.int64), misses[miss[alive]] + 1])
        ref = img
    return out
