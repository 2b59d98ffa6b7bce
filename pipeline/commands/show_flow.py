"""`pipeline show-flow`: one dataset pair as a picture (frame1 | frame2 | [flow] | GT | [error])."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, layout_options
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.flow.datasets import FlowDataset
from unsamflow.pipeline.flow.io import read_flow
from unsamflow.pipeline.flow.viz import flow_panel
from unsamflow.pipeline.images import write_png
from unsamflow.pipeline.layouts import scan


@click.command("show-flow", epilog=EXIT_CODES)
@layout_options(required=True)
@click.option("--root", type=click.Path(exists=True, path_type=Path), required=True,
              help="Dataset root folder (dataset pairs: the list file).")
@click.option("--pair", "pair_index", type=int, default=None, help="Pair index in the scanned manifest.")
@click.option("--frame", default=None, help="Frame id of the pair's first frame (instead of --pair).")
@click.option("--flow", "pred", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A predicted flow (.flo / KITTI .png) to draw beside the GT with its error map.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write.")
@click.option("--max-flow", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Flow magnitude (px) drawn at full colour (fixed, so pictures compare). "
                   "Default: the largest GT vector.")
def show_flow(layout: str, root: Path, pair_index: int | None, frame: str | None, pred: Path | None,
              out: Path, max_flow: float | None, layout_opts: tuple[str, ...]) -> None:  # fmt: skip
    """Draw a pair of a dataset with its ground-truth flow in the Middlebury colour wheel.

    With --flow, also the prediction and its error, and prints EPE (px) and Fl-all (% of pixels with
    error > 3 px and > 5% of the GT magnitude) against the ground truth.

    \b
    Example:
      unsamflow-pipeline show-flow --layout sintel-clean --root /data/MPI-Sintel --frame \\
          training/clean/alley_1/frame_0001.png --flow pred.flo --out pair.png
    """
    from unsamflow.pipeline.commands.options import parse_kv

    if pair_index is not None and frame is not None:
        raise BadInputError("give --pair or --frame, not both")
    ds = FlowDataset(scan(layout, root, **parse_kv(layout_opts, "--layout-option")))
    if not len(ds):
        raise BadInputError(f"{root}: the {layout} layout found no frame pairs")
    index = ds.index_of(frame) if frame is not None else (pair_index or 0)
    if not -len(ds) <= index < len(ds):
        raise BadInputError(f"--pair {index} is out of range: {root} has {len(ds)} pairs")
    s = ds[index]
    flow = None
    if pred is not None:
        flow, _ = read_flow(pred)
        if flow.shape[:2] != s["img1"].shape[:2]:
            raise BadInputError(f"{pred}: flow is {flow.shape[0]}x{flow.shape[1]} (HxW), frames are "
                                f"{s['img1'].shape[0]}x{s['img1'].shape[1]}")  # fmt: skip
    panel = flow_panel(s["img1"], s["img2"], flow, s.get("flow"), s.get("valid"), max_flow, annotate=True)
    click.echo(f"{write_png(out, panel)}: {s['frame1']} -> {s['frame2']}"
               + ("" if "flow" in s else " (no ground truth)"))  # fmt: skip
    if flow is not None and "flow" in s:
        epe, fl = flow_errors(flow, s["flow"], s.get("valid"))
        click.echo(f"EPE {epe:.3f} px, Fl-all {fl:.2f} %")


def flow_errors(flow, gt, valid=None) -> tuple[float, float]:
    """(mean end-point error in px, Fl-all in %: pixels with error > 3 px and > 5% of |gt|), over valid
    pixels: KITTI's definitions, per picture."""
    import numpy as np

    ok = np.isfinite(gt).all(axis=2)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    err = np.linalg.norm(flow - gt, axis=2)[ok]
    mag = np.linalg.norm(gt, axis=2)[ok]
    if not err.size:
        return float("nan"), float("nan")
    return float(err.mean()), float(100 * np.mean((err > 3) & (err > 0.05 * mag)))
