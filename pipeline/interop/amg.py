"""segment-anything's `scripts/amg.py` binary-mask output: a folder per image, `{i}.png` + `metadata.csv`.

amg.py writes each mask as a 0/255 single-channel PNG named by its index and one CSV row per mask
with the header below (point_input is the prompt point, boxes XYWH with w = x_max - x_min).
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import write_png
from unsamflow.pipeline.interop.records import number

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
METADATA = "metadata.csv"


def write_amg_folder(folder: Path, records: list[dict]) -> Path:
    """Write records exactly as amg.py's write_masks_to_folder does (values via str())."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [HEADER]
    for i, rec in enumerate(records):
        write_png(folder / f"{i}.png", np.asarray(rec["segmentation"], np.uint8) * 255)
        rows.append(",".join([
            str(i), str(rec["area"]), *[str(x) for x in rec["bbox"]],
            *[str(x) for x in rec["point_coords"][0]], str(rec["predicted_iou"]),
            str(rec["stability_score"]), *[str(x) for x in rec["crop_box"]],
        ]))
    (folder / METADATA).write_text("\n".join(rows) + "\n")
    return folder


def read_amg_folder(folder: Path, shape: tuple[int, int]) -> list[dict]:
    """Records of one amg.py folder; BadInputError naming the file when it does not fit `shape` (H, W)."""
    meta = folder / METADATA
    try:
        with open(meta, newline="") as f:
            reader = csv.DictReader(f)
            missing = set(HEADER.split(",")) - set(reader.fieldnames or ())
            if missing:
                raise BadInputError(f"{meta}: not amg.py metadata (missing columns {sorted(missing)})")
            rows = list(reader)
    except FileNotFoundError:
        raise BadInputError(f"{meta} not found") from None
    records = []
    for row in rows:
        path = folder / f"{row['id']}.png"
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise BadInputError(f"{path}: missing or not an image")
        if img.shape != tuple(shape):
            raise BadInputError(f"{path}: mask is {img.shape[0]}x{img.shape[1]} (HxW), the frame is "
                                f"{shape[0]}x{shape[1]}")
        try:
            records.append({
                "segmentation": img >= 128,
                "area": int(number(row["area"])),
                "bbox": [number(row[f"bbox_{k}"]) for k in ("x0", "y0", "w", "h")],
                "predicted_iou": float(row["predicted_iou"]),
                "point_coords": [[float(row["point_input_x"]), float(row["point_input_y"])]],
                "stability_score": float(row["stability_score"]),
                "crop_box": [number(row[f"crop_box_{k}"]) for k in ("x0", "y0", "w", "h")],
            })
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{meta}, id {row.get('id')!r}: {exc}") from None
    return records
