"""Flow for consecutive frames of a folder or a video, written as flow files and colour pictures.

A folder is read with the pipeline's `folder` layout (every folder that directly holds images is a
sequence in natural order), so frame ids match the mask stores `pipeline run --layout folder` made.
A video is read with cv2.VideoCapture; its frames are named frame_000000, frame_000001, ...
Before anything is written, every frame's size is checked (a frame whose size differs from its
sequence's first fails, naming it), so a bad input never leaves half an output folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.evaluation.evaluator import FLOW_SUFFIXES, output_stem
from unsamflow.trainer.evaluation.predictors import FlowPredictor

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class InferResult:
    pairs: int
    flow_files: list[Path]
    pictures: list[Path]


def frame_pairs(source: str | Path) -> tuple[int, Iterator[tuple[str, np.ndarray, str, np.ndarray]]]:
    """(number of pairs, iterator of (id1, img1, id2, img2)) over consecutive frames of a folder or video."""
    source = Path(source)
    if source.is_dir():
        return _folder_pairs(source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        return _video_pairs(source)
    if not source.exists():
        raise BadInputError(f"input not found: {source}")
    kinds = ", ".join(VIDEO_SUFFIXES)
    raise BadInputError(f"{source}: input must be a folder of frames or a video ({kinds})")


def _folder_pairs(root: Path):
    from PIL import Image
    from unsamflow.pipeline.flow import open_dataset

    ds = open_dataset("folder", root)
    if len(ds) == 0:
        raise BadInputError(f"{root}: no two consecutive frames found (need a folder holding >= 2 images)")
    first: dict[str, tuple[str, tuple[int, int]]] = {}
    for frame in ds.manifest.frames:  # header-only reads: catch a mismatched size before writing
        path = ds.manifest.path(frame.id)
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as exc:
            raise BadInputError(f"{path}: not a readable image ({exc})") from None
        ref = first.setdefault(frame.sequence, (frame.id, size))
        if size != ref[1]:
            raise BadInputError(
                f"frame {frame.id!r} is {size[0]}x{size[1]} but {ref[0]!r} of the same sequence is "
                f"{ref[1][0]}x{ref[1][1]}: consecutive frames must match"
            )

    def pairs():
        for s in ds:
            yield s["frame1"], s["img1"], s["frame2"], s["img2"]

    return len(ds), pairs()


def _video_pairs(path: Path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise BadInputError(f"{path}: cannot be opened as a video")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    if not ok:
        cap.release()
        raise BadInputError(f"{path}: no frame can be decoded")

    def pairs():
        prev, i = frame[..., ::-1].copy(), 0
        try:
            while True:
                ok, nxt = cap.read()
                if not ok:
                    return
                nxt = nxt[..., ::-1].copy()
                yield f"frame_{i:06d}", prev, f"frame_{i + 1:06d}", nxt
                prev, i = nxt, i + 1
        finally:
            cap.release()

    return max(count - 1, 0), pairs()


def infer(
    predictor: FlowPredictor | Callable[..., np.ndarray],
    source: str | Path,
    out: str | Path,
    *,
    flow_format: str = "flo",
    segs: Callable[[str, np.ndarray], np.ndarray] | None = None,
    on_pair: Callable[[int, int, str], None] | None = None,
) -> InferResult:
    """Write `out/flow/<frame1>.<flo|png>` and `out/color/<frame1>.png` for each consecutive pair."""
    from unsamflow.pipeline.flow import flow_to_color, write_flow
    from unsamflow.pipeline.images import write_png

    if flow_format not in FLOW_SUFFIXES:
        raise BadInputError(f"--format must be one of {sorted(FLOW_SUFFIXES)}, got {flow_format!r}")
    if getattr(predictor, "needs_segs", False) and segs is None:
        raise BadInputError("the model has mask features (+mf) and needs full_seg: give --masks STORES "
                            "(made for this input) or --segment")  # fmt: skip
    total, pairs = frame_pairs(source)
    if segs is not None and hasattr(segs, "check_covers") and Path(source).is_dir():
        from unsamflow.pipeline.flow import open_dataset

        segs.check_covers(f.id for f in open_dataset("folder", source).manifest.frames)
    out = Path(out)
    result = InferResult(0, [], [])
    for id1, img1, id2, img2 in pairs:
        seg1 = seg2 = None
        if segs is not None:
            seg1, seg2 = segs(id1, img1), segs(id2, img2)
        flow = np.asarray(predictor(img1, img2, seg1, seg2), np.float32)
        stem = output_stem(id1)
        result.flow_files.append(write_flow(out / "flow" / f"{stem}{FLOW_SUFFIXES[flow_format]}", flow))
        result.pictures.append(write_png(out / "color" / f"{stem}.png", flow_to_color(flow)))
        result.pairs += 1
        if on_pair is not None:
            on_pair(result.pairs, total, id1)
    if result.pairs == 0:
        raise BadInputError(f"{source}: fewer than two frames, no flow to compute")
    return result
