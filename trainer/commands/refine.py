"""`python -m unsamflow.trainer refine`: replace each confidently fitted region's flow by its homography
flow."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from unsamflow.pipeline.errors import BadInputError

# trainer.refine.RULES / DEFAULT_RULE, spelled out so that `--help` does not import torch (a test checks)
RULE_NAMES = ("any", "loss", "one-motion")
DEFAULT_RULE = "one-motion"


def _seg_from_store(store: str, frame: str) -> np.ndarray:
    from unsamflow.pipeline.store.index import Index

    index = Index.load(store)
    try:
        if frame not in index:
            raise BadInputError(f"frame {frame!r} is not in the stores under {store}")
        ms, row = index.store_for(frame)
        return np.asarray(ms.read_full_seg(row)).astype(np.int64)
    finally:
        index.close()


def before_after_picture(before: np.ndarray, after: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """before | after | |after - before| (RGB), the two flows drawn on one colour scale, titled, with the
    colour wheel's scale and the difference's colour bar in px below."""
    from unsamflow.pipeline.flow.viz import annotate_panel, error_to_color, flow_to_color
    from unsamflow.pipeline.show import label_edges

    mag = float(np.linalg.norm(before, axis=2).max()) or 1.0
    diff = np.linalg.norm(after - before, axis=2)
    edges = label_edges(seg)
    tiles = [flow_to_color(before, max_flow=mag), flow_to_color(after, max_flow=mag), error_to_color(diff)]
    for t in tiles[:2]:
        t[edges] = 0  # region outlines show what was fitted
    return annotate_panel(tiles, ["before", "after", "|after - before|"], max_flow=mag, error_legend=True)


@click.command("refine")
@click.option("--flow", "flow_path", required=True, type=click.Path(dir_okay=False),
              help="Input flow (.flo or KITTI .png).")
@click.option("--seg", "seg_path", type=click.Path(dir_okay=False),
              help="Full segmentation: single-channel 8/16-bit label PNG.")
@click.option("--store", type=click.Path(file_okay=False), help="Mask store directory (with --frame).")
@click.option("--frame", help="Frame id whose full segmentation to read from --store.")
@click.option("--occ", "occ_path", type=click.Path(dir_okay=False),
              help="Optional occlusion mask PNG (255 = occluded): excluded from the fit.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="Refined flow (.flo or KITTI .png).")
@click.option("--rule", type=click.Choice(RULE_NAMES), default=DEFAULT_RULE, show_default=True,
              help="Option set: one-motion (every region one homography explains: inlier rate >= 0.9, "
                   "visible >= 0.5, only disagreeing pixels replaced), loss (the paper's: 6 most occluded "
                   "regions, 3 px, rate >= 0.5; needs --occ), any (every region, rate >= 0.5). The options "
                   "below override it.")
@click.option("--regions", default=None, help="all | largest-N | occluded-N  [default: the rule's]")
@click.option("--ransac-thresh", default=None, type=float, help="Inlier distance (px)  [default: the rule's]")
@click.option("--min-inlier-rate", default=None, type=float,
              help="Fraction 0..1 of the visible pixels within --ransac-thresh px  [default: the rule's]")
@click.option("--min-visible-frac", default=None, type=float,
              help="Least share of a region usable for the fit  [default: the rule's]")
@click.option("--keep-inliers/--replace-all", default=None,
              help="Replace only the pixels that disagree with the fit, or the whole region  "
                   "[default: the rule's]")
@click.option("--min-pixels", default=64, show_default=True, type=int, help="Smaller regions are kept as is.")
@click.option("--include-background", is_flag=True, help="Also fit label 0 (pixels in no mask).")
@click.option("--picture", type=click.Path(dir_okay=False),
              help="Before/after PNG (default: next to --out, *_refine.png).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Per-region JSON report.")
@click.option("--seed", default=0, show_default=True, type=int, help="RANSAC sampling seed.")
def refine(flow_path, seg_path, store, frame, occ_path, out_path, rule, regions, ransac_thresh,
           min_inlier_rate, min_visible_frac, keep_inliers, min_pixels, include_background, picture,
           report_path, seed) -> None:
    """Fit a homography to each full_seg region's flow and replace the flow where it fits well.

    \b
    Example:
      python -m unsamflow.trainer refine --flow demo_out/data/training/flow/seq_000/frame_0001.flo \\
          --store demo_out/masks/stores --frame training/clean/seq_000/frame_0001.png \\
          --out refined.flo --picture refined.png
    """
    from unsamflow.pipeline.flow.io import read_flow, read_label_png, read_mask_png, write_flow
    from unsamflow.pipeline.images import write_png
    from unsamflow.trainer.refine import refine_flow

    if (seg_path is None) == (store is None):
        raise BadInputError("give exactly one of --seg PNG or --store DIR (with --frame)")
    if store is not None and not frame:
        raise BadInputError("--store needs --frame ID")
    flow, valid = read_flow(flow_path)
    seg = read_label_png(seg_path).astype(np.int64) if seg_path else _seg_from_store(store, frame)
    if seg.shape != flow.shape[:2]:
        where = seg_path or f"{store} frame {frame!r}"
        raise BadInputError(f"{where}: segmentation is {seg.shape[1]}x{seg.shape[0]} but "
                            f"{flow_path} is {flow.shape[1]}x{flow.shape[0]}")
    occ = read_mask_png(occ_path, flow.shape[:2]) if occ_path else None
    refined, report = refine_flow(
        flow, seg, valid=valid, occ=occ, rule=rule, regions=regions, ransac_thresh=ransac_thresh,
        min_inlier_rate=min_inlier_rate, min_visible_frac=min_visible_frac, keep_inliers=keep_inliers,
        min_pixels=min_pixels, include_background=include_background, seed=seed,
    )
    out = write_flow(out_path, refined, valid | (refined != flow).any(axis=2))
    pic = Path(picture) if picture else out.with_name(out.stem + "_refine.png")
    write_png(pic, before_after_picture(flow, refined, seg))
    if report_path:
        Path(report_path).write_text(json.dumps(report.to_dict(), indent=1))
    click.echo(
        f"refined {report.num_refined} of {len(report.regions)} regions (rule {rule}; flow of "
        f"{report.replaced_pixels / flow[..., 0].size:.1%} of pixels replaced) -> {out}; picture {pic}"
    )
