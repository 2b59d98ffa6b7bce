"""`pipeline export`: the masks of a store directory in amg.py's folder layout or as COCO RLE JSON.

Layout of OUT: per frame id `seq/00001.jpg`, `seq/00001/{0,1,...}.png` + `metadata.csv` (amg) or
`seq/00001.json` (coco-rle): amg.py's names (the image name without extension) under the id's folders.
`export.json` lists the frames written, the bad frames skipped, the format and the box convention.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.interop import FORMATS
from unsamflow.pipeline.interop.amg import write_amg_folder
from unsamflow.pipeline.interop.coco import write_coco_json
from unsamflow.pipeline.interop.records import frame_records, frame_stem

BBOX_CONVENTION = ("bbox and crop_box are x, y, w, h in pixels with segment-anything's w = x_max - x_min "
                   "(pycocotools' toBbox gives x_max - x_min + 1)")
EXPORT_INFO = "export.json"


@dataclass
class ExportResult:
    out: Path
    format: str
    frames: list[str] = field(default_factory=list)
    masks: int = 0
    bad_frames: dict[str, str] = field(default_factory=dict)


def export_stores(store_dir: Path, out: Path, fmt: str, frames: str | None = None,
                  progress: bool = True, manifest=None) -> ExportResult:
    """Write every good frame (matching the glob `frames`, if given) of the indexed stores to `out`
    (youtube-vis: one file, OUT/youtube-vis.json, videos from `manifest`'s sequences)."""
    from tqdm import tqdm
    from unsamflow.pipeline.progress import bar_disable
    from unsamflow.pipeline.store.index import Index

    if fmt not in FORMATS:
        raise BadInputError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "youtube-vis":
        from unsamflow.pipeline.interop.youtube_vis import export_youtube_vis

        written, masks, bad = export_youtube_vis(store_dir, out, manifest, frames, progress)
        return ExportResult(out, fmt, written, masks, bad)
    index = Index.load(store_dir)
    ids = [f for f in index.frame_ids if frames is None or fnmatch.fnmatchcase(f, frames)]
    if not ids:
        raise BadInputError(f"{store_dir}: no stored frame matches --frames {frames!r}" if frames
                            else f"{store_dir}: the stores hold no frames")
    res = ExportResult(out, fmt, bad_frames={f: r for f, r in index.bad_frames.items()
                                             if frames is None or fnmatch.fnmatchcase(f, frames)})
    try:
        for fid in tqdm(ids, desc="export", unit="frame", disable=bar_disable(progress)):
            records = frame_records(index.open(fid))
            target = out / frame_stem(fid)
            if fmt == "amg":
                write_amg_folder(target, records)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_coco_json(target.with_name(target.name + ".json"), records)
            res.frames.append(fid)
            res.masks += len(records)
    finally:
        index.close()
    info = {"format": fmt, "stores": str(Path(store_dir).resolve()), "bbox_convention": BBOX_CONVENTION,
            "segmenter": index.segmenter, "frames": res.frames, "bad_frames": res.bad_frames}
    write_bytes_atomic(out / EXPORT_INFO, json.dumps(info, indent=1).encode())
    return res
