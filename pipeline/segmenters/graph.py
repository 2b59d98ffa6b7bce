"""`graph`: the weight-free default segmenter (a Felzenszwalb region hierarchy, SAM-style records).

It exists so that the whole pipeline (full segmentation, key objects, training with masks) runs on a
machine with no checkpoint and no GPU. SAM's automatic generator returns overlapping masks at several
granularities (a whole object, its parts, sub-parts); we imitate that with a strict region hierarchy:

1. work on a copy downscaled (INTER_AREA) so that its longer side is at most `max_side`;
2. run scikit-image's Felzenszwalb graph segmentation once per value in `scales` (finest first);
3. snap every coarser level onto the one below it - each finer region joins the coarse segment it
   overlaps most - so every region is an exact union of regions of the level below (small masks sit
   inside bigger ones, as SAM's parts sit inside their objects);
4. upsample the label maps to full resolution (nearest) and emit one record per region, skipping
   regions smaller than `min_area` full-resolution pixels, regions covering the whole frame, and
   regions identical to one a level below (kept once, at the finest level).

Record fields are computed exactly on the full-resolution masks, in segment-anything's conventions:
`bbox` is XYWH with w = x_max - x_min and h = y_max - y_min (inclusive pixel extents, as
`batched_mask_to_box` + `box_xyxy_to_xywh` give), `crop_box` is the whole frame [0, 0, W, H], and
`point_coords` is the region pixel farthest from the region boundary (always inside the mask; the
analogue of SAM's prompt point). The two scores have these meanings:

- `predicted_iou`: IoU between the snapped region and the raw Felzenszwalb segment it came from at its
  own scale, i.e. how well the region fits the hierarchy (1.0 on the finest level);
- `stability_score`: IoU between the region and the region containing it one level up (= their area
  ratio, since they are nested): 1.0 when the region survives the next scale step unchanged, small when
  it is immediately absorbed into a much larger one (1.0 on the coarsest level).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.masks import rle_decode
from unsamflow.pipeline.store.codec import runs_of

# Bytes per working-image pixel at the peak of Felzenszwalb + the hierarchy (measured with tracemalloc:
# up to 372 on real frames of 133k working pixels), with a margin.
WORKING_BYTES_PER_PIXEL = 512

# Bump when a change of this file changes the masks for the same config.
ALGORITHM_VERSION = 1


class GraphSegmenter:
    """Weight-free hierarchical segmenter producing SamAutomaticMaskGenerator-style records.

    Arguments:
      scales: Felzenszwalb `scale` per hierarchy level, strictly increasing (finest level first); larger
        values give larger regions. Measured on the downscaled working image.
      sigma: Gaussian pre-smoothing of the working image (Felzenszwalb `sigma`).
      min_size: smallest Felzenszwalb segment, in working-image pixels.
      max_side: longer side of the working image; frames larger than this are downscaled first
        (segmentation cost grows with the pixel count; labels are upsampled back, nearest).
      min_area: regions smaller than this many full-resolution pixels are not emitted.
    """

    name = "graph"
    thread_safe = True  # no state between calls: worker threads may segment at once (CPU-bound)

    def __init__(
        self,
        scales: Sequence[float] | float = (100.0, 300.0, 900.0, 2700.0),
        sigma: float = 0.8,
        min_size: int = 20,
        max_side: int = 384,
        min_area: int = 1024,
    ) -> None:
        if isinstance(scales, (int, float)):  # `-o scales=300` on the command line gives one number
            scales = [scales]
        try:
            scales = [float(s) for s in scales]
        except (TypeError, ValueError):
            raise BadInputError(
                f"graph segmenter: scales must be a list of numbers, got {scales!r}"
            ) from None
        if not scales or scales[0] <= 0 or any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
            raise BadInputError(
                f"graph segmenter: scales must be positive and strictly increasing, got {scales}"
            )
        if sigma < 0:
            raise BadInputError(f"graph segmenter: sigma must be >= 0, got {sigma}")
        if min_size < 1:
            raise BadInputError(f"graph segmenter: min_size must be >= 1, got {min_size}")
        if max_side < 16:
            raise BadInputError(f"graph segmenter: max_side must be >= 16, got {max_side}")
        if min_area < 1:
            raise BadInputError(f"graph segmenter: min_area must be >= 1, got {min_area}")
        self.scales = scales
        self.sigma = float(sigma)
        self.min_size = int(min_size)
        self.max_side = int(max_side)
        self.min_area = int(min_area)
        self.version = (
            f"graph/{ALGORITHM_VERSION} scikit-image/{importlib.metadata.version('scikit-image')} "
            f"opencv/{cv2.__version__}"
        )

    @staticmethod
    def check_options(**options: Any) -> None:
        """The option values, checked on the client before anything is written or any cluster starts
        (building one is cheap): `-o 'scales=[3,2,1]'` or `-o sigma=-1` fail there, not in every shard."""
        GraphSegmenter(**options)

    def config(self) -> dict[str, Any]:
        return {
            "scales": list(self.scales),
            "sigma": self.sigma,
            "min_size": self.min_size,
            "max_side": self.max_side,
            "min_area": self.min_area,
        }

    def peak_bytes(self, shape: tuple[int, int]) -> int:
        """An upper bound of the memory a frame of `shape` (H, W) takes in `segment_compact`, checked
        against the frame budget before the call. Per pixel: one mask's crop, its column strip and the
        strip's change flags (1 + 1 + 1), and the change positions (8 per change, at most one per pixel
        in a column of the upsampled label map, bounded below). Plus the run lengths of all masks: a
        column of a level's upsampled label map changes at most h - 1 times (h: the working height),
        so a level's masks hold at most 2 W h + 1 runs per mask (uint32). The working image (at most
        max_side^2 pixels) costs WORKING_BYTES_PER_PIXEL."""
        H, W = int(shape[0]), int(shape[1])
        h, w = _working_shape(H, W, self.max_side)
        strips = 3 * H * W + 8 * W * min(H, h + 1)
        runs = 4 * len(self.scales) * (2 * W * h + 1) * 2
        work = WORKING_BYTES_PER_PIXEL * h * w
        return strips + runs + work

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The records with full-frame bool masks (the Segmenter contract); see segment_compact."""
        records = self.segment_compact(image)
        for rec in records:
            rec["segmentation"] = rle_decode(rec["segmentation"])
        return records

    def segment_compact(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The records with each mask as segment-anything's uncompressed RLE (column-major, zeros first,
        counts a uint32 array). Everything is computed on the working image and each mask is made alone
        from its box, so a frame costs one mask and the run lengths (peak_bytes), never N x H x W: full
        masks of a 4000x4000 frame took 10 GB."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadInputError(
                f"graph segmenter: expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}"
            )
        H, W = image.shape[:2]
        small = _downscale(image, self.max_side)
        h, w = small.shape[:2]
        # Nearest upsampling by explicit index maps: full-res pixel X reads working pixel X * w // W.
        rows = np.arange(H) * h // H
        cols = np.arange(W) * w // W
        # Full-resolution pixels per working pixel: exact full-res areas without a full-res label map.
        weight = np.outer(np.bincount(rows, minlength=h), np.bincount(cols, minlength=w)).ravel()

        levels = self._hierarchy(small)
        areas = [np.bincount(lab.ravel(), weights=weight, minlength=len(fit)).astype(np.int64)
                 for lab, _, fit in levels]

        records: list[dict[str, Any]] = []
        for k, (lab, parent, fit_iou) in enumerate(levels):
            n = len(areas[k])
            stability = areas[k] / areas[k + 1][parent] if parent is not None else np.ones(n)
            keep = (areas[k] >= self.min_area) & (areas[k] < H * W)
            if k > 0:
                # A region with exactly one child is that child again: emit it once, at the finer level.
                keep &= np.bincount(levels[k - 1][1], minlength=n) != 1
            ids = np.flatnonzero(keep)
            if len(ids) == 0:
                continue
            points = _inner_points(lab)
            boxes = ndimage.find_objects(lab + 1)
            for r in ids:
                ys, xs = boxes[r]
                # The working box's full-resolution rows and columns (rows/cols are non-decreasing).
                y0, y1 = np.searchsorted(rows, [ys.start, ys.stop])
                x0, x1 = np.searchsorted(cols, [xs.start, xs.stop])
                crop = (lab[ys, xs] == r)[rows[y0:y1] - ys.start][:, cols[x0:x1] - xs.start]
                py, px = points[r]
                records.append(
                    {
                        "segmentation": _rle_of_crop(crop, int(y0), int(x0), H, W),
                        "area": int(areas[k][r]),
                        "bbox": [int(x0), int(y0), int(x1) - 1 - int(x0), int(y1) - 1 - int(y0)],
                        "predicted_iou": float(fit_iou[r]),
                        "stability_score": float(stability[r]),
                        # First full-res pixel mapping to the working pixel: inside the upsampled mask.
                        "point_coords": [[float(-(-px * W // w)), float(-(-py * H // h))]],
                        "crop_box": [0, 0, W, H],
                    }
                )
        return records

    def _hierarchy(self, small: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Per level (finest first): (label map, parent label one level up or None, fit IoU per label)."""
        out: list[list[Any]] = []
        below: np.ndarray | None = None
        for scale in self.scales:
            raw = felzenszwalb(small, scale=scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1)
            if below is None:
                lab = raw.astype(np.int64)
                fit = np.ones(int(lab.max()) + 1)
            else:
                m, n = int(below.max()) + 1, int(raw.max()) + 1
                overlap = np.bincount((below * n + raw).ravel(), minlength=m * n).reshape(m, n)
                # Each region below joins the raw segment it overlaps most (lowest label on ties).
                target = overlap.argmax(axis=1)
                used, parent = np.unique(target, return_inverse=True)
                out[-1][1] = parent
                lab = parent[below]
                size_below = overlap.sum(axis=1)
                inter = np.bincount(parent, weights=overlap[np.arange(m), target], minlength=len(used))
                snapped = np.bincount(parent, weights=size_below, minlength=len(used))
                raw_size = overlap.sum(axis=0)[used]
                fit = inter / (snapped + raw_size - inter)
            out.append([lab, None, fit])
            below = lab
        return [(lab, parent, fit) for lab, parent, fit in out]


def _rle_of_crop(crop: np.ndarray, y0: int, x0: int, H: int, W: int) -> dict:
    """Uncompressed RLE (column-major, zeros first) of an (H, W) mask that is `crop` at (y0, x0) and
    empty elsewhere; only the crop's columns are ever made."""
    h, w = crop.shape
    strip = np.zeros((w, H), bool)  # the crop's columns at full height, column-major
    strip[:, y0 : y0 + h] = crop.T
    runs = runs_of(strip.ravel()).astype(np.uint32)
    del strip
    runs[0] += H * x0  # the empty columns left of the box join the first 0-run
    after = H * (W - x0 - w)
    if len(runs) % 2:  # ends with a 0-run: the columns right of the box join it
        runs[-1] += after
    elif after:
        runs = np.append(runs, np.uint32(after))
    return {"size": [H, W], "counts": runs}


def _working_shape(H: int, W: int, max_side: int) -> tuple[int, int]:
    """(h, w) of the working image: the frame downscaled so that its longer side is at most max_side."""
    if max(H, W) <= max_side:
        return H, W
    s = max_side / max(H, W)
    return max(1, round(H * s)), max(1, round(W * s))


def _downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    H, W = image.shape[:2]
    h, w = _working_shape(H, W, max_side)
    if (h, w) == (H, W):
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)


def _inner_points(labels: np.ndarray) -> np.ndarray:
    """(row, col) per label of the pixel farthest from its region's boundary (ties: first in raster order)."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 3)
    flat = labels.ravel()
    # Sort by (label, -distance, raster index); the first entry of each label group is its point.
    order = np.lexsort((-dist.ravel(), flat))
    first = np.searchsorted(flat[order], np.arange(int(flat.max()) + 1))
    best = order[first]
    return np.stack(np.unravel_index(best, labels.shape), axis=1)
