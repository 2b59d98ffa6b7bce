"""The segmenter contract: one RGB image in, SAM automatic-mask-generator records out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

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
    """Built once per worker, called for every frame that worker gets."""

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
        import json

        return json.dumps([self.name, self.options], sort_keys=True, default=str)
