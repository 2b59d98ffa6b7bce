"""HDF5 mask stores: one file per shard, self-describing, written atomically, read one frame at a time.

Layout (format "unsamflow-masks", version 1). Root attributes: format, format_version, segmenter,
derive_config, source, shard (JSON strings), created, library_version. Ragged data is flat with
per-row offsets, so one frame is one slice of each dataset:

    frames/  id, image_shape (n,2), sha256, mask_start, mask_count          one row per good frame
    masks/   area, bbox (m,4) XYWH, predicted_iou, stability_score,
             point_coords (m,2), crop_box (m,4) XYWH,                       one row per mask
             box (m,4) y x h w, run_start, run_count: its run lengths in runs (see mask_codec)
    masks/runs                                                               run lengths, flat uint32
    derived/ seg_start, seg_itemsize, key_start, key_count                  one row per good frame
    derived/full_seg (flat bytes, per-frame smallest uint), derived/key_objects (flat int64)
    bad/     id, reason                                                      frames that could not be used
    tracks/  mask_track, key_track (optional; version 2, see store.tracks)   object ids through a sequence

Every dataset has a `description` attribute (DESCRIPTIONS: meaning, axis order, units) and the root one
(STORE_DESCRIPTION), so a store reads without this code; `pipeline inspect STORE` prints them.

Every dataset has HDF5's standard shuffle + gzip-6 filters (any HDF5 reads them; filters are
transparent to readers, so stores written before with plain gzip-4 read the same). Measured in
bench_store on 43 real frames with 123 masks each, all in one store: the byte shuffle groups the zero
high bytes of the uint32 run lengths (masks 26.3 -> 17.5 KiB per frame), gzip-6 shrinks full_seg
(13.0 -> 9.4 KiB, read faster too); 44.0 -> 31.3 KiB per frame in all, for ~0.5 ms more compression
per frame (gzip-9: 30.6 KiB for 11 ms; gzip-1: 42.1 KiB). Bulk datasets have 64 KiB chunks, so a
frame's masks span a few chunks and share at most the two at its ends with neighbours. The
per-frame offsets are read into memory on open, so reading one frame is one small slice per dataset
and never scans other frames. On those frames: 31.3 KiB per frame (masks 17.5, full_seg 9.4,
metadata 2.5, HDF5 structure 1.9; pycocotools' COCO JSON of the same masks: 97.7 KiB), plus a fixed
~64 KiB per store (mostly one chunk index per dataset): +6 KiB per frame in a 10-frame shard, +0.6 in
a 100-frame one. CPU per frame read: all of it 4.3 ms (pycocotools' json.load + decode: 29 ms), the
trainer's full_seg + key objects + their masks 1.6 ms (shared 2-core VM: +-50% with machine state).
"""


from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np
from unsamflow.pipeline.store import codec

FORMAT_NAME = "unsamflow-masks"
# 2: the optional tracks/ group (store.tracks). Version-1 stores read as before (no tracks).
FORMAT_VERSION = 2
BYTES_CHUNK = 1 << 16  # bulk datasets: a frame spans a few chunks, its neighbours share at most two
ROWS_CHUNK = 1024  # per-mask / per-frame metadata
# Filters of every dataset (transparent to readers: stores written with plain gzip-4 before read the same).
_GZIP: dict[str, Any] = {"shuffle": True, "compression": "gzip", "compression_opts": 6}
_STR = h5py.string_dtype()
_JSON_ATTRS = ("segmenter", "derive_config", "source", "shard")

# name -> (dtype, trailing shape, chunk length)
_FRAME_FIELDS = {
    "frames/id": (_STR, (), ROWS_CHUNK),
    "frames/image_shape": (np.int32, (2,), ROWS_CHUNK),
    "frames/sha256": ("S64", (), ROWS_CHUNK),
    "frames/mask_start": (np.int64, (), ROWS_CHUNK),
    "frames/mask_count": (np.int32, (), ROWS_CHUNK),
}
_MASK_FIELDS = {
    "masks/area": (np.int64, (), ROWS_CHUNK),
    "masks/bbox": (np.int32, (4,), ROWS_CHUNK),
    "masks/predicted_iou": (np.float64, (), ROWS_CHUNK),
    "masks/stability_score": (np.float64, (), ROWS_CHUNK),
    "masks/point_coords": (np.float64, (2,), ROWS_CHUNK),
    "masks/crop_box": (np.int32, (4,), ROWS_CHUNK),
    "masks/box": (np.int32, (4,), ROWS_CHUNK),
    "masks/run_start": (np.int64, (), ROWS_CHUNK),
    "masks/run_count": (np.int32, (), ROWS_CHUNK),
    "masks/runs": (codec.RUN_DTYPE, (), BYTES_CHUNK // 4),
}
_DERIVED_FIELDS = {
    "derived/seg_start": (np.int64, (), ROWS_CHUNK),
    "derived/seg_itemsize": (np.uint8, (), ROWS_CHUNK),
    "derived/key_start": (np.int64, (), ROWS_CHUNK),
    "derived/key_count": (np.int32, (), ROWS_CHUNK),
    "derived/full_seg": (np.uint8, (), BYTES_CHUNK),
    "derived/key_objects": (np.int64, (), ROWS_CHUNK),
}
_BAD_FIELDS = {"bad/id": (_STR, (), ROWS_CHUNK), "bad/reason": (_STR, (), ROWS_CHUNK)}


# Every dataset carries its meaning as a `description` attribute, so that h5py / h5dump users can read a
# store without this code (`pipeline inspect STORE` prints them). Axis order and units are stated.
STORE_DESCRIPTION = (
    "unsamflow mask store: SAM-style automatic masks of video frames. Ragged data is flat: frame r's masks "
    "are rows masks/*[frames/mask_start[r] : + frames/mask_count[r]]; mask i's pixels are run lengths "
    "masks/runs[masks/run_start[i] : + masks/run_count[i]]. Coordinates are pixels, x to the right, y down. "
    "Root attributes segmenter, derive_config, source and shard are JSON text."
)
DESCRIPTIONS = {
    "frames/id": "frame id: the image path relative to the dataset root (root attribute `source`).",
    "frames/image_shape": "(height, width) of the frame in pixels.",
    "frames/sha256": "sha256 (hex) of the source image file as segmented.",
    "frames/mask_start": "first row in masks/* of this frame's masks.",
    "frames/mask_count": "number of masks of this frame (rows in masks/*).",
    "masks/area": "mask area in pixels.",
    "masks/bbox": "segmenter's box (x, y, w, h) in pixels, segment-anything's convention: w = x_max - x_min "
                  "(one less than the pixel count; pycocotools' toBbox gives x_max - x_min + 1).",
    "masks/predicted_iou": "segmenter's predicted IoU of the mask (0..1).",
    "masks/stability_score": "segmenter's stability score (0..1).",
    "masks/point_coords": "(x, y) in pixels of the point prompt that produced the mask.",
    "masks/crop_box": "(x, y, w, h) in pixels of the image crop the mask was generated in.",
    "masks/box": "tight box of the mask's pixels as (y, x, h, w), h and w pixel counts; the run lengths "
                 "cover exactly this box. Note the order differs from bbox (x, y, w, h).",
    "masks/run_start": "first element in masks/runs of this mask's run lengths.",
    "masks/run_count": "number of run lengths of this mask.",
    "masks/runs": "run lengths (uint32) of each mask's box pixels in row-major (C) order, alternating "
                  "0-runs and 1-runs, starting with a 0-run (possibly of length 0).",
    "derived/seg_start": "first byte in derived/full_seg of this frame's full segmentation.",
    "derived/seg_itemsize": "bytes per label of this frame's full_seg (1, 2, 4 or 8): an unsigned "
                            "little-endian integer.",
    "derived/full_seg": "packed full segmentations: per frame, height*width labels (row-major, (H, W)) of "
                        "seg_itemsize bytes each. Region labels, not mask indices: each pixel takes the "
                        "smallest mask holding it, masks numbered largest first, the occurring ones "
                        "renumbered 0..K in that order; 0 = in no mask (or, when every pixel is covered, "
                        "the largest occurring mask).",
    "derived/key_start": "first row in derived/key_objects of this frame's key objects.",
    "derived/key_count": "number of key objects of this frame.",
    "derived/key_objects": "indices (0-based, within the frame's masks) of key objects (root attribute "
                           "derive_config gives the thresholds).",
    "bad/id": "frame id that could not be used (it has no row in frames/*).",
    "bad/reason": "why that frame could not be used.",
    "tracks/mask_track": "track id of each mask (row for row with masks/*): sequence number (in the "
                         "manifest) * 2**32 + the track's number within that sequence; the same id in two "
                         "frames is the same object. Group attribute `config` (JSON): how they were made.",
    "tracks/key_track": "track id of each key object (row for row with derived/key_objects): the track of "
                        "that key object's mask.",
}


@dataclass
class FrameMasks:
    """Everything a store holds about one frame. Per-mask arrays have N rows."""

    frame_id: str
    image_shape: tuple[int, int]
    sha256: str
    masks: np.ndarray  # (N, H, W) bool
    area: np.ndarray  # (N,) int64
    bbox: np.ndarray  # (N, 4) int32 XYWH as the segmenter gave it
    predicted_iou: np.ndarray  # (N,) float64
    stability_score: np.ndarray  # (N,) float64
    point_coords: np.ndarray  # (N, 2) float64 x, y
    crop_box: np.ndarray  # (N, 4) int32 XYWH
    full_seg: np.ndarray  # (H, W) smallest unsigned dtype holding its labels
    key_objects: np.ndarray  # (K,) int64 mask indices



def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("unsamflow")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def seg_dtype(max_label: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dt).max:
            return np.dtype(dt).newbyteorder("<")
    return np.dtype("<u8")

