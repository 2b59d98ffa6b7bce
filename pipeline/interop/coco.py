"""amg.py's `--convert-to-rle` output: one JSON list of records per image, masks in COCO RLE.

The encoding is pycocotools' (column-major run lengths, compressed `counts` string, `size` [h, w]), so
`pycocotools.mask.decode(record["segmentation"])` gives the mask back. Boxes keep segment-anything's
XYWH with w = x_max - x_min; pycocotools' `toBbox` of the same mask gives w one larger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError


def encode_rle(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [h, w], "counts": str}, as segment_anything.utils.amg.coco_encode_rle."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> (H, W) bool."""
    from pycocotools import mask as mask_utils

    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    counts = rle["counts"]
    rle = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(rle).astype(bool)


def write_coco_json(path: Path, records: list[dict]) -> Path:
    """The records with their masks as RLE: what amg.py writes with --convert-to-rle."""
    out = [{**{k: v for k, v in r.items() if k != "segmentation"},
            "segmentation": encode_rle(r["segmentation"])} for r in records]
    return write_bytes_atomic(path, json.dumps(out).encode())


def read_coco_json(path: Path, shape: tuple[int, int]) -> list[dict]:
    """Records of one COCO RLE JSON file; BadInputError naming the file when it does not fit `shape`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BadInputError(f"{path} not found") from None
    except ValueError as exc:
        raise BadInputError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and "annotations" in data:  # a COCO results-style file
        data = data["annotations"]
    if not isinstance(data, list):
        raise BadInputError(f"{path}: expected a list of mask records")
    records = []
    for i, rec in enumerate(data):
        try:
            seg = rec["segmentation"]
            if [int(v) for v in seg["size"]] != list(shape):
                raise BadInputError(f"{path}, record {i}: mask size {seg['size']} (h, w), the frame is "
                                    f"{list(shape)}")
            mask = decode_rle(seg)
            bbox = rec.get("bbox")
            records.append({
                "segmentation": mask,
                "area": int(rec.get("area", mask.sum())),
                "bbox": bbox if bbox is not None else _sam_bbox(mask),
                "predicted_iou": float(rec.get("predicted_iou", 1.0)),
                "point_coords": rec.get("point_coords", [[0.0, 0.0]]),
                "stability_score": float(rec.get("stability_score", 1.0)),
                "crop_box": rec.get("crop_box", [0, 0, shape[1], shape[0]]),
            })
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadInputError):
                raise
            raise BadInputError(f"{path}, record {i}: not a COCO RLE mask record ({exc!r})") from None
    return records


def _sam_bbox(mask: np.ndarray) -> list[int]:
    """XYWH in segment-anything's convention (w = x_max - x_min) for records that carry no bbox."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
