"""The segmenter contract: one RGB image in, SAM automatic-mask-generator records out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from unsamflow.pipeline.canonical import canonical_json

# Keys of segment-anything's SamAutomaticMaskGenerator records ("binary_mask" output mode).
RECORD_KEYS = (
    "segmentation",  # bool H x W
    "area",  # int
    "bbox",  # [x, y, w, h]
    "predicted_iou",  # float
    "stability_score",  # float
    "point_coords",  # [[x, y]]
    "crop_box",  # [x, y, w, h]
)


@runtime_checkable
class Segmenter(Protocol):
    """Built once per worker, called for every frame that worker gets.

    Optional attributes the segment stage uses when present: `segment_compact(image)` (records with
    uncompressed-RLE masks, cheaper to hand over than H x W arrays), `peak_bytes(shape)` (memory a frame
    will take, checked against the frame budget first) and `thread_safe = True` (calls from a worker's
    task threads may overlap; without it they take turns, as a model on one GPU must).
    """

    name: str
    version: str

    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration; stored with the masks it produced."""

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        """image: H x W x 3 uint8 RGB. Returns records with RECORD_KEYS."""


@dataclass(frozen=True)
class SegmenterSpec:
    """What a Dask task carries instead of a model: small, picklable, hashable by key()."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:

        return canonical_json([self.name, self.options])


def check_records(records: list[dict[str, Any]], shape: tuple[int, int], segmenter: str) -> None:
    """Raise BadInputError naming `segmenter` and the record when records break the format.

    A mask is a bool (H, W) array or segment-anything's uncompressed RLE ({"size": [H, W], "counts":
    [...]}, column-major, zeros first): the compact form keeps big frames from holding N x H x W bytes.
    Cheap structural checks (keys, mask shape and dtype, box and point lengths, area == mask pixels), meant
    for output of third-party plug-ins before it reaches a store.
    """
    from unsamflow.pipeline.errors import BadInputError

    if not isinstance(records, list):
        raise BadInputError(f"segmenter {segmenter!r} returned a {type(records).__name__}, not a list")
    for i, rec in enumerate(records):
        missing = [k for k in RECORD_KEYS if k not in rec]
        if missing:
            raise BadInputError(f"segmenter {segmenter!r}: record {i} lacks keys {missing}")
        seg = rec["segmentation"]
        if isinstance(seg, dict) and "size" in seg and "counts" in seg:  # SAM's uncompressed RLE
            _check_rle(seg, shape, segmenter, i, rec)
            continue
        if not isinstance(seg, np.ndarray) or seg.dtype != bool or seg.shape != tuple(shape):
            got = (getattr(seg, "shape", None), getattr(seg, "dtype", type(seg).__name__))
            raise BadInputError(
                f"segmenter {segmenter!r}: record {i} segmentation must be a bool array of shape "
                f"{tuple(shape)}, got shape/dtype {got}"
            )
        _check_fields(rec, segmenter, i, int(np.count_nonzero(seg)))


def _check_fields(rec: dict[str, Any], segmenter: str, i: int, pixels: int) -> None:
    from unsamflow.pipeline.errors import BadInputError

    if len(rec["bbox"]) != 4 or len(rec["crop_box"]) != 4:
        raise BadInputError(f"segmenter {segmenter!r}: record {i} bbox and crop_box must be [x, y, w, h]")
    if not rec["point_coords"] or any(len(p) != 2 for p in rec["point_coords"]):
        raise BadInputError(f"segmenter {segmenter!r}: record {i} point_coords must be [[x, y], ...]")
    if int(rec["area"]) != pixels:
        raise BadInputError(f"segmenter {segmenter!r}: record {i} area {rec['area']} but {pixels} pixels")


def _check_rle(seg: dict, shape: tuple[int, int], segmenter: str, i: int, rec: dict[str, Any]) -> None:
    """An uncompressed RLE mask (segment-anything's format): its size and its counts fit the frame."""
    from unsamflow.pipeline.errors import BadInputError

    counts = np.asarray(seg["counts"])
    size = [int(v) for v in seg["size"]]
    total = shape[0] * shape[1]
    if size != list(shape) or counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != total:
        raise BadInputError(
            f"segmenter {segmenter!r}: record {i} RLE segmentation must have size {list(shape)} and "
            f"non-negative counts summing to {total}; got size {size}, sum {int(counts.sum())}"
        )
    _check_fields(rec, segmenter, i, int(counts[1::2].sum()))
