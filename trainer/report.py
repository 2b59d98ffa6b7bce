"""The demo report: a trained model beside the zero-flow and OpenCV DIS baselines, in markdown with pictures.

Evaluated sets: the dataset the caller names (e.g. held-out synthetic pairs with their mask stores) and the
small real samples the repository ships (tests/data: Sintel, KITTI 2015, Middlebury; else the larger
shared set at $UNSAMFLOW_SHARED_DATA). Real samples have no stores: a model with mask features (+mf)
gets full_seg made on the spot by the pipeline's default segmenter (under a second per frame); a model
without them runs without masks. Every predictor goes through the same evaluator (trainer.evaluation).

Pictures per pair: frame 1 | frame 2 | full_seg | true flow, then each predictor's flow | error map
(flows on one colour scale, the true flow's largest vector; errors in the KITTI devkit's colours, blue
below 1.5 px to red beyond 24 px, with the colour bar under the picture).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadInputError

# (title, dataset name, folder under a data root) of the real samples, and the data roots to look in.
REAL_SAMPLES = (
    ("Sintel clean (real)", "sintel-clean-training", "sintel"),
    ("KITTI 2015 (real)", "kitti-2015-training", "kitti2015"),
    ("Middlebury (real)", "middlebury-other", "middlebury"),
)
_REPO = Path(__file__).resolve().parents[1]
TILE_WIDTH = 320


@dataclass
class ReportSet:
    """One evaluated set: a dataset by name and root, optionally with its mask stores."""

    title: str
    name: str
    root: Path
    masks: Path | None = None
    test_size: str = "default"


def sample_roots() -> list[Path]:
    """Where the real samples are looked for: the repository's tests/data (a source checkout; a wheel does
    not ship it), then $UNSAMFLOW_SHARED_DATA (default ../shared/data)."""
    return [_REPO / "tests" / "data",
            Path(os.environ.get("UNSAMFLOW_SHARED_DATA", _REPO.parent / "shared" / "data"))]  # fmt: skip


def real_sample_sets() -> list[ReportSet]:
    """The shipped real samples (tests/data), else the shared data folder's; missing ones are left out
    (`missing_real_samples` names them, so that callers can say so)."""
    roots = sample_roots()
    sets = []
    for title, name, folder in REAL_SAMPLES:
        root = next((r / folder for r in roots if (r / folder).is_dir()), None)
        if root is not None:
            sets.append(ReportSet(title, name, root))
    return sets


def missing_real_samples() -> str | None:
    """A sentence naming the real samples that were not found and where they were looked for, or None."""
    found = {s.name for s in real_sample_sets()}
    missing = [title for title, name, _ in REAL_SAMPLES if name not in found]
    if not missing:
        return None
    where = " and ".join(str(r) for r in sample_roots())
    return (f"real samples skipped ({', '.join(missing)}): not found in {where}; a pip install does not ship "
            "the repository's tests/data: set UNSAMFLOW_SHARED_DATA to a folder holding sintel/, kitti2015/ "
            "and middlebury/ (e.g. a clone's tests/data), or pass --no-real-samples")  # fmt: skip


def build_report(
    checkpoint: str | Path,
    out: str | Path,
    sets: list[ReportSet],
    *,
    device: str | None = None,
    refine: bool = False,
    max_pairs: int = 4,
    pictures: int = 2,
    notes: list[str] | None = None,
) -> Path:
    """Evaluate the checkpoint's model, DIS and zero flow on each set; write out/report.md (+ report.json,
    pictures/) and return the markdown's path. `notes`: lines for the report's head (what was skipped)."""
    from unsamflow.pipeline.atomic import write_bytes_atomic
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.pipeline.images import write_png
    from unsamflow.trainer.evaluation import (
        DISFlow,
        SegmenterSegs,
        StoreSegs,
        ZeroFlow,
        evaluate,
        load_network,
        markdown_table,
        parse_test_size,
    )

    if not sets:
        raise BadInputError("nothing to report: no dataset given and no real samples found")
    out = Path(out)
    network, _ = load_network(checkpoint, device)
    mf = network.needs_segs
    lines = [
        "# unsamflow evaluation report", "",
        f"Model: `{network.source}` (PWC-Lite{' +mf' if mf else ''}), on {network.device}; "
        f"baselines: zero flow, OpenCV DIS (medium preset). Metrics as ptlflow names them: "
        "epe and its non-occluded / occluded parts in px, px1/3/5 the fraction of pixels within 1/3/5 px, "
        "flall the percentage of outliers (> 3 px and > 5 % of the true magnitude), pooled over pixels; "
        "`*_per_image` averages the images (KITTI).", "",
        *(f"Note: {n}." for n in notes or []), *([""] if notes else []),
    ]  # fmt: skip
    doc: dict = {"checkpoint": network.source, "mask_features": mf, "sets": []}
    for s in sets:
        ds = open_dataset(s.name, s.root, gt_only=True)
        indices = list(range(min(len(ds), max_pairs)))
        stores = StoreSegs(s.masks) if s.masks else None
        made = None if stores else SegmenterSegs()
        segs = stores or (made if (mf or refine) else None)
        network.test_size = parse_test_size(s.test_size, s.name)
        flows: dict[str, list[np.ndarray]] = {}
        rows, results = [], []
        for predictor in (network, DISFlow(), ZeroFlow()):
            keep = flows.setdefault(predictor.name, [])
            r = evaluate(predictor, ds, s.name, segs=segs, refine=refine and predictor is network,
                         indices=indices, on_flow=lambda _, f, ref, keep=keep: keep.append((f, ref)))
            results.append(r)
            rows.append((f"{predictor.name}", r.metrics))
            if r.refined is not None:
                rows.append((f"{predictor.name} + refine", r.refined))
        how = ("masks from " + str(s.masks)) if stores else (
            "full_seg made on the spot (default segmenter)" if segs else "no masks")
        size = f"{network.test_size[0]}x{network.test_size[1]}" if network.test_size else "native (padded)"
        lines += [f"## {s.title}", "",
                  f"`{s.name}` at `{s.root}`: {len(indices)} pair(s), {results[0].aggregate} aggregation, "
                  f"test size {size}, {how}; model {results[0].seconds_per_pair:.2f} s/pair.", "",
                  markdown_table(rows), ""]  # fmt: skip
        for k in range(min(pictures, len(indices))):
            sample = ds[indices[k]]
            seg = segs(sample["frame1"], sample["img1"]) if segs else made(sample["frame1"], sample["img1"])
            pic = pair_picture(sample, seg, {name: f[k] for name, f in flows.items()})
            rel = Path("pictures") / f"{_slug(s.title)}_{k}.png"
            write_png(out / rel, pic)
            lines += [f"![{s.title} pair {k}: {sample['frame1']}]({rel.as_posix()})", ""]
        doc["sets"].append({"title": s.title, "name": s.name, "root": str(s.root),
                            "results": [r.to_dict() for r in results]})  # fmt: skip
        if stores is not None:
            stores.close()
    write_bytes_atomic(out / "report.json", json.dumps(doc, indent=1).encode())
    lines += [f"Made {time.strftime('%Y-%m-%d %H:%M')}; numbers in `report.json`."]
    return write_bytes_atomic(out / "report.md", "\n".join(lines).encode())


def pair_picture(
    sample: dict, seg: np.ndarray, flows: dict[str, tuple[np.ndarray, np.ndarray | None]]
) -> np.ndarray:
    """Row 1: frames, full_seg, true flow; then one row per predictor: flow | error (| refined | error)."""
    from unsamflow.pipeline.flow import error_to_color, flow_to_color
    from unsamflow.pipeline.flow.viz import error_scale
    from unsamflow.pipeline.show import draw_labels, titled

    gt, valid = sample["flow"], sample["valid"]
    mag = np.linalg.norm(gt, axis=2)[valid]
    scale = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    tiles = [titled(_fit(sample["img1"]), "frame 1"), titled(_fit(sample["img2"]), "frame 2"),
             titled(_fit(draw_labels(seg)), f"full_seg ({int(seg.max()) + 1} labels)"),
             titled(_fit(flow_to_color(gt, valid, scale)), "true flow")]  # fmt: skip
    for name, (flow, refined) in flows.items():
        for label, f in ((name, flow), (f"{name} + refine", refined)):
            if f is None:
                continue
            epe = np.linalg.norm(f - gt, axis=2)
            tiles += [titled(_fit(flow_to_color(f, max_flow=scale)), f"{label} flow"),
                      titled(_fit(error_to_color(epe, valid)), f"{label} error")]  # fmt: skip
    grid = _grid(tiles, columns=4)
    legend = np.full((30, grid.shape[1], 3), 255, np.uint8)  # the error colours, in px (KITTI devkit's)
    bar = error_scale(min(360, grid.shape[1]), 30)
    legend[:, : bar.shape[1]] = bar
    return np.concatenate([grid, _hgap(4, grid.shape[1]), legend], axis=0)


def _fit(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    if w <= TILE_WIDTH:
        return img
    return cv2.resize(img, (TILE_WIDTH, round(h * TILE_WIDTH / w)), interpolation=cv2.INTER_AREA)


def _grid(tiles: list[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    blank = np.full((h, w, 3), 255, np.uint8)
    rows = []
    for i in range(0, len(tiles), columns):
        row = tiles[i : i + columns] + [blank] * (columns - len(tiles[i : i + columns]))
        parts = []
        for t in row:
            parts += [t, np.full((h, gap, 3), 255, np.uint8)]
        rows += [np.concatenate(parts[:-1], axis=1), _hgap(gap, columns * (w + gap) - gap)]
    return np.concatenate(rows[:-1], axis=0)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def _hgap(gap: int, width: int) -> np.ndarray:
    return np.full((gap, width, 3), 255, np.uint8)

