"""The video-instance format of YouTube-VIS (and OVIS, which uses the same layout): one JSON for the set.

    videos:       [{id, name, width, height, length, file_names: [frame id, ...]}]   one per sequence
    categories:   [{id: 1, name: "object"}]                                          SAM masks have no class
    annotations:  [{id, video_id, category_id, iscrowd, width, height, length: 1,
                    segmentations: [COCO RLE or null, per frame of the video],
                    bboxes: [[x, y, w, h] or null, ...], areas: [pixels or null, ...]}]  one per track

`bboxes` follow COCO (pycocotools' toBbox: w = x_max - x_min + 1), as video-instance tools expect. So that
export -> import gives the stores back exactly, each annotation also carries `track_id` (the store's id)
and `unsamflow` per-frame lists (the mask's position in its frame, segment-anything's bbox with
w = x_max - x_min, predicted_iou, stability_score, point_coords, crop_box), and the root `unsamflow`
holds the track configuration and the bad frames with their reasons. Other tools ignore these keys; a
file without them imports too (defaults, ids numbered per video).
"""

from __future__ import annotations

import fnmatch
import functools
import json
from pathlib import Path

import numpy as np
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.interop.coco import _sam_bbox, decode_rle, encode_rle
from unsamflow.pipeline.manifest import Manifest

FILE = "youtube-vis.json"
_PER_FRAME = ("mask_index", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")


def export_youtube_vis(store_dir: Path, out: Path, manifest: Manifest | None, frames: str | None = None,
                       progress: bool = True) -> tuple[list[str], int, dict[str, str]]:
    """Write OUT/youtube-vis.json from tracked stores: (frames written, masks, bad frames)."""
    from tqdm import tqdm
    from unsamflow.pipeline.progress import bar_disable
    from unsamflow.pipeline.store.index import Index
    from unsamflow.pipeline.store.tracks import read_mask_tracks, track_config

    if manifest is None:
        raise BadInputError("--format youtube-vis needs --manifest: its sequences are the videos")
    index = Index.load(store_dir)
    videos, annotations, written, bad = [], [], [], {}
    by_track: dict[int, dict] = {}
    config = None
    masks_total = 0
    bar = tqdm(total=len(manifest.frames), desc="export", unit="frame", disable=bar_disable(progress))
    try:
        for number, (name, seq) in enumerate(manifest.sequences().items()):
            ids = [f.id for f in seq if frames is None or fnmatch.fnmatchcase(f.id, frames)]
            bar.update(len(seq))
            if not ids:
                continue
            video = {"id": number + 1, "name": name, "width": None, "height": None, "length": len(ids),
                     "file_names": ids}
            for t, fid in enumerate(ids):
                if fid in index.bad_frames:
                    bad[fid] = index.bad_frames[fid]
                    continue
                store, row = index.store_for(fid)
                tracks = read_mask_tracks(store, row)
                if tracks is None:
                    raise BadInputError(f"{store.path}: no tracks; run `pipeline track` before exporting "
                                        "youtube-vis")
                config = config or track_config(store)
                fm = store.read(row)
                h, w = fm.image_shape
                if video["height"] is None:
                    video["height"], video["width"] = h, w
                elif (video["height"], video["width"]) != (h, w):
                    raise BadInputError(f"frame {fid!r} is {h}x{w}, the video {name!r} "
                                        f"{video['height']}x{video['width']}: a video has one frame size")
                for i, tid in enumerate(tracks.tolist()):
                    ann = by_track.get(tid)
                    if ann is None:
                        ann = by_track[tid] = _annotation(len(annotations) + 1, number + 1, len(ids), tid)
                        annotations.append(ann)
                    rle = encode_rle(fm.masks[i])
                    ann["height"], ann["width"] = h, w
                    ann["segmentations"][t] = rle
                    ann["bboxes"][t] = _coco_bbox(fm.masks[i])
                    ann["areas"][t] = int(fm.area[i])
                    extra = ann["unsamflow"]
                    extra["mask_index"][t] = i
                    extra["bbox"][t] = [int(v) for v in fm.bbox[i]]
                    extra["predicted_iou"][t] = float(fm.predicted_iou[i])
                    extra["stability_score"][t] = float(fm.stability_score[i])
                    extra["point_coords"][t] = [float(v) for v in fm.point_coords[i]]
                    extra["crop_box"][t] = [int(v) for v in fm.crop_box[i]]
                masks_total += len(tracks)
                written.append(fid)
            videos.append(video)
    finally:
        bar.close()
        index.close()
    if not written and not bad:
        raise BadInputError(f"{store_dir}: no stored frame matches --frames {frames!r}" if frames
                            else f"{store_dir}: the stores hold no frames")
    doc = {
        "info": {"description": "masks and object tracks exported by unsamflow", "format": "youtube-vis"},
        "licenses": [],
        "videos": videos,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
        "annotations": annotations,
        "unsamflow": {"track_config": config, "bad_frames": bad,
                      "bbox_convention": "bboxes: COCO (w = x_max - x_min + 1); unsamflow.bbox: "
                                         "segment-anything's (w = x_max - x_min)"},
    }
    write_bytes_atomic(out / FILE, json.dumps(doc).encode())
    return written, masks_total, bad


def _annotation(ann_id: int, video_id: int, length: int, tid: int) -> dict:
    per_frame = {k: [None] * length for k in ("segmentations", "bboxes", "areas")}
    return {"id": ann_id, "video_id": video_id, "category_id": 1, "iscrowd": 0, "height": None,
            "width": None, "length": 1, **per_frame, "track_id": tid,
            "unsamflow": {k: [None] * length for k in _PER_FRAME}}


def _coco_bbox(mask: np.ndarray) -> list[int]:
    x, y, w, h = _sam_bbox(mask)
    return [x, y, w + 1, h + 1] if mask.any() else [0, 0, 0, 0]


class YouTubeVIS:
    """A youtube-vis JSON read back: per frame its records (in the stored order) and their track ids."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise BadInputError(f"{self.path} not found (export --format youtube-vis writes {FILE})"
                                ) from None
        except ValueError as exc:
            raise BadInputError(f"{self.path}: not valid JSON ({exc})") from None
        try:
            self._parse(doc)
        except (KeyError, TypeError, IndexError) as exc:
            raise BadInputError(f"{self.path}: not a youtube-vis file ({type(exc).__name__}: {exc})"
                                ) from None

    def _parse(self, doc: dict) -> None:
        extra = doc.get("unsamflow") or {}
        self.track_config = extra.get("track_config")
        self.bad = dict(extra.get("bad_frames") or {})
        self.frames: dict[str, tuple[int, int]] = {}  # frame id -> (video id, position)
        for v in doc["videos"]:
            for t, fid in enumerate(v["file_names"]):
                self.frames[fid] = (v["id"], t)
        self.tracks: dict[str, list[int]] = {}  # frame id -> track ids as read (records() fills it)
        self._anns: dict[int, list[dict]] = {}
        for ann in doc["annotations"]:
            self._anns.setdefault(ann["video_id"], []).append(ann)

    def records(self, frame_id: str, shape: tuple[int, int]) -> tuple[list[dict], list[int | None]]:
        """(records, track ids from the file or None each) of one frame; BadFrameError when the file has
        no such frame or records it bad."""
        if frame_id in self.bad:
            raise BadFrameError(frame_id, self.bad[frame_id])
        if frame_id not in self.frames:
            raise BadFrameError(frame_id, f"not in any video of {self.path}")
        vid, t = self.frames[frame_id]
        found = []
        for k, ann in enumerate(self._anns.get(vid, [])):
            seg = ann["segmentations"][t]
            if seg is None:
                continue
            if [int(v) for v in seg["size"]] != list(shape):
                raise BadFrameError(frame_id, f"{self.path}: annotation {ann['id']} has a {seg['size']} "
                                              f"(h, w) mask, the frame is {list(shape)}")
            mask = decode_rle(seg)
            extra = {key: (ann.get("unsamflow") or {}).get(key, [None] * (t + 1))[t] for key in _PER_FRAME}
            get = functools.partial(_or, extra)
            areas = ann.get("areas") or [None] * (t + 1)
            order = get("mask_index", 10**9 + k)  # the stored order; other tools' files: annotation order
            rec = {
                "segmentation": mask,
                "area": int(mask.sum()) if areas[t] is None else int(areas[t]),
                "bbox": get("bbox", _sam_bbox(mask)),
                "predicted_iou": float(get("predicted_iou", 1.0)),
                "stability_score": float(get("stability_score", 1.0)),
                "point_coords": [get("point_coords", [0.0, 0.0])],
                "crop_box": get("crop_box", [0, 0, shape[1], shape[0]]),
            }
            found.append((order, rec, ann.get("track_id"), k))
        found.sort(key=lambda x: x[0])
        # Without a track_id (another tool's file), -1 - k names annotation k of the video.
        self.tracks[frame_id] = [tid if tid is not None else -1 - k for _, _, tid, k in found]
        return [r for _, r, _, _ in found], self.tracks[frame_id]


def _or(values: dict, key: str, default):
    return default if values[key] is None else values[key]


_OPEN: dict[Path, YouTubeVIS] = {}  # one parse per file and process (import reads it frame by frame)


def open_vis(src: Path) -> YouTubeVIS:
    path = (Path(src) / FILE).resolve()
    if path not in _OPEN:
        _OPEN[path] = YouTubeVIS(path)
    return _OPEN[path]


def write_imported_tracks(src: Path, manifest: Manifest, stores: list[Path]) -> None:
    """Give the imported stores the file's tracks: its ids where they belong to the frame's sequence in
    this manifest (an unsamflow export), else ids numbered per video; the file's track configuration when
    it was made from this manifest, else one that names the file."""
    from unsamflow.pipeline.shard import manifest_sha256
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.tracks import SEQUENCE_SHIFT, sequence_of, track_id, write_tracks

    vis = open_vis(src)
    sequences = manifest.sequences()
    number = {f.id: n for n, fs in enumerate(sequences.values()) for f in fs}
    sha = manifest_sha256(manifest)
    config = vis.track_config
    if not config or config.get("manifest_sha256") != sha:
        config = {"imported_from": {"format": "youtube-vis", "path": str(vis.path)}, "manifest_sha256": sha,
                  "sequences": len(sequences)}
    local_mask = (1 << SEQUENCE_SHIFT) - 1
    for store in stores:
        with MaskStore(store) as s:
            ids = s.frame_ids
        tracks = {}
        for fid in ids:
            n = number[fid]
            tracks[fid] = np.array([t if t >= 0 and sequence_of(np.array([t]))[0] == n
                                    else int(track_id(n, (t & local_mask) if t >= 0 else -1 - t))
                                    for t in vis.tracks[fid]], np.int64)
        write_tracks(store, tracks, config)
