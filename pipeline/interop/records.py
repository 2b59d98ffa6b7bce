"""One frame of a store as segment-anything records, and the path of a frame in an exported tree."""

from __future__ import annotations

from pathlib import PurePosixPath

from unsamflow.pipeline.store.schema import FrameMasks


def frame_records(fm: FrameMasks) -> list[dict]:
    """The frame's masks as SamAutomaticMaskGenerator records (full-frame bool `segmentation`)."""
    return [
        {
            "segmentation": fm.masks[i],
            "area": int(fm.area[i]),
            "bbox": [int(v) for v in fm.bbox[i]],
            "predicted_iou": float(fm.predicted_iou[i]),
            "point_coords": [[float(v) for v in fm.point_coords[i]]],
            "stability_score": float(fm.stability_score[i]),
            "crop_box": [int(v) for v in fm.crop_box[i]],
        }
        for i in range(len(fm.area))
    ]


def frame_stem(frame_id: str) -> str:
    """'judo/00001.jpg' -> 'judo/00001': amg.py names its output after the image without extension; we
    keep the id's folders so that frames of different sequences cannot collide."""
    p = PurePosixPath(frame_id)
    return str(p.with_suffix("")) if p.suffix else str(p)


def number(text: str) -> int | float:
    """A CSV number as amg.py wrote it (str() of an int or a float): int when written as one."""
    try:
        return int(text)
    except ValueError:
        return float(text)
