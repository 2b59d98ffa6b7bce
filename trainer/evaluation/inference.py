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
    max_flow: float | None = None,
) -> InferResult:
    """Write `out/flow/<frame1>.<flo|png>` and `out/color/<frame1>.png` for each consecutive pair.

    max_flow: the |flow| in px drawn at full colour in every picture (default: each pair's, see
    flow_picture); the legend under each picture states it."""
    from unsamflow.pipeline.flow import write_flow
    from unsamflow.pipeline.images import write_png

    if flow_format not in FLOW_SUFFIXES:
        raise BadInputError(f"--format must be one of {sorted(FLOW_SUFFIXES)}, got {flow_format!r}")
    if getattr(predictor, "needs_segs", False) and segs is None:
        raise BadInputError("the model has mask features (+mf) and needs full_seg: give --masks STORES "
                            "(made for this input) or --segment")  # fmt: skip
    total, pairs = frame_pairs(source)
    if segs is not None and hasattr(segs, "check_covers") and Path(source).is_dir():
        from unsamflow.pipeline.flow import open_dataset

        ids = [f.id for f in open_dataset("folder", source).manifest.frames]
        if hasattr(segs, "align_to"):  # stores made from a folder above the input match by relative path
            segs.align_to(source, ids)
        segs.check_covers(ids)
    out = Path(out)
    result = InferResult(0, [], [])
    for id1, img1, id2, img2 in pairs:
        seg1 = seg2 = None
        if segs is not None:
            seg1, seg2 = segs(id1, img1), segs(id2, img2)
        flow = np.asarray(predictor(img1, img2, seg1, seg2), np.float32)
        stem = output_stem(id1)
        result.flow_files.append(write_flow(out / "flow" / f"{stem}{FLOW_SUFFIXES[flow_format]}", flow))
        result.pictures.append(write_png(out / "color" / f"{stem}.png", flow_picture(flow, max_flow)))
        result.pairs += 1
        if on_pair is not None:
            on_pair(result.pairs, total, id1)
    if result.pairs == 0:
        raise BadInputError(f"{source}: fewer than two frames, no flow to compute")
    return result


MIN_AUTO_SCALE = 1.0  # px: an automatic scale never goes below this, so sub-pixel noise stays pale


def auto_scale(flow: np.ndarray) -> float:
    """The picture scale of a flow: its 99th-percentile |flow| (one stray vector does not wash out the
    rest), never below MIN_AUTO_SCALE px, so a near-zero flow does not look like motion."""
    mag = np.linalg.norm(np.nan_to_num(np.asarray(flow, np.float32)), axis=2)
    return max(float(np.percentile(mag, 99)) if mag.size else 0.0, MIN_AUTO_SCALE)


def flow_picture(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """The flow in colour with a legend row below: the colour wheel and the |flow| (px) its rim stands for,
    and the largest |flow| in the picture."""
    from unsamflow.pipeline.flow.viz import annotate_panel, flow_to_color

    scale = float(max_flow) if max_flow is not None else auto_scale(flow)
    biggest = float(np.linalg.norm(np.nan_to_num(flow), axis=2).max()) if flow.size else 0.0
    title = f"flow (max |flow| {biggest:.3g} px)"
    return annotate_panel([flow_to_color(flow, max_flow=scale)], [title], max_flow=scale)


@dataclass
class PairInference:
    """What `infer_pair` wrote, and the metrics against --gt when given."""

    flow_file: Path
    picture: Path
    metrics: dict[str, float] | None = None
    panel: Path | None = None


def infer_pair(
    predictor: FlowPredictor | Callable[..., np.ndarray],
    image1: str | Path,
    image2: str | Path,
    out: str | Path,
    *,
    gt: str | Path | None = None,
    flow_format: str = "flo",
    segs: Callable[[str, np.ndarray], np.ndarray] | None = None,
    max_flow: float | None = None,
) -> PairInference:
    """Flow of one pair of image files -> out/flow/<image1 stem>.<flo|png> and out/color/<stem>.png; with
    `gt` (a .flo or KITTI PNG) also the metrics (ptlflow names) and out/panel/<stem>.png (frames, flow,
    ground truth, error map)."""
    from unsamflow.pipeline.flow import flow_panel, read_flow, write_flow
    from unsamflow.pipeline.images import read_rgb, write_png
    from unsamflow.trainer.metrics import FlowMetrics

    if flow_format not in FLOW_SUFFIXES:
        raise BadInputError(f"--format must be one of {sorted(FLOW_SUFFIXES)}, got {flow_format!r}")
    if getattr(predictor, "needs_segs", False) and segs is None:
        raise BadInputError("the model has mask features (+mf) and needs full_seg: give --masks STORES "
                            "(made for these frames) or --segment")  # fmt: skip
    img1, _ = read_rgb(image1)
    img2, _ = read_rgb(image2)
    if img1.shape != img2.shape:
        raise BadInputError(f"{image2} is {img2.shape[1]}x{img2.shape[0]} but {image1} is "
                            f"{img1.shape[1]}x{img1.shape[0]}: the frames of a pair must match")  # fmt: skip
    gt_flow = valid = None
    if gt is not None:
        gt_flow, valid = read_flow(gt)
        if gt_flow.shape[:2] != img1.shape[:2]:
            raise BadInputError(f"{gt}: ground truth is {gt_flow.shape[1]}x{gt_flow.shape[0]} but the frames "
                                f"are {img1.shape[1]}x{img1.shape[0]}")  # fmt: skip
    seg1 = seg2 = None
    if segs is not None:
        ids = [segs.frame_id(p) if hasattr(segs, "frame_id") else str(p) for p in (image1, image2)]
        if hasattr(segs, "check_covers"):
            segs.check_covers(ids)
        seg1, seg2 = segs(ids[0], img1), segs(ids[1], img2)
    flow = np.asarray(predictor(img1, img2, seg1, seg2), np.float32)
    out, stem = Path(out), Path(image1).stem
    result = PairInference(write_flow(out / "flow" / f"{stem}{FLOW_SUFFIXES[flow_format]}", flow),
                           write_png(out / "color" / f"{stem}.png", flow_picture(flow, max_flow)))
    if gt_flow is not None:
        result.metrics = FlowMetrics("pixel").update(flow, gt_flow, valid)[0]
        panel = flow_panel(img1, img2, flow, gt_flow, valid, max_flow=max_flow, annotate=True)
        result.panel = write_png(out / "panel" / f"{stem}.png", panel)
    return result
