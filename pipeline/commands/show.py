"""`pipeline show`: PNG pictures of frames from the mask stores."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb, write_png
from unsamflow.pipeline.manifest import safe_join
from unsamflow.pipeline.show import frame_picture, safe_name


def render_frames(stores: Path, frame_ids: list[str], out: Path, root: Path | None = None) -> list[Path]:
    """Write one picture per frame id; ids are looked up through the store index."""
    from unsamflow.pipeline.store.index import Index

    index = Index.load(stores)
    written = []
    for fid in frame_ids:
        store, row = index.store_for(fid)
        fm = store.read(row)
        base = root or Path(store.source["root"])
        image, _ = read_rgb(safe_join(base, fid), fid)
        pic = frame_picture(image, fm.masks, fm.bbox, fm.full_seg, fm.key_objects, fid)
        written.append(write_png(out / safe_name(fid), pic))
    return written


def render_track_strip(stores: Path, frame_ids: list[str], out: Path, root: Path | None = None) -> Path:
    """One PNG of the frames with their masks in their tracks' colours (pipeline.show_tracks)."""
    from unsamflow.pipeline.show_tracks import track_strip
    from unsamflow.pipeline.store.index import Index
    from unsamflow.pipeline.store.tracks import read_mask_tracks

    index = Index.load(stores)
    panels = []
    for fid in frame_ids:
        store, row = index.store_for(fid)
        ids = read_mask_tracks(store, row)
        if ids is None:
            raise BadInputError(f"{store.path}: no tracks; run `pipeline track` first")
        image, _ = read_rgb(safe_join(root or Path(store.source["root"]), fid), fid)
        panels.append((fid, image, store.read_masks(row), ids))
    return write_png(out / ("tracks__" + safe_name(frame_ids[0])), track_strip(panels))


@click.command(epilog=EXIT_CODES)
@click.option("--stores", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Directory of mask stores (with index.json from `pipeline index`).")
@click.option("--frame", "frames", multiple=True,
              help="Frame id (repeatable). Default: the first --count frames.")
@click.option("--count", type=click.IntRange(min=1), default=3, show_default=True,
              help="Number of frames to draw (the first in index order) when no --frame is given.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Dataset root if it moved since segmentation (default: the root recorded in the store).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the PNGs (one per frame, named after the frame id).")
@click.option("--tracks", is_flag=True,
              help="Instead: one strip of the frames side by side, each track in its own colour with its "
                   "number (the stores need `pipeline track`); give a sequence's frames with --frame.")
def show(stores: Path, frames: tuple[str, ...], count: int, root: Path | None, out: Path, tracks: bool
         ) -> None:
    """Masks over the image, the full segmentation and the key objects of frames, as PNG.

    \b
    Example:
      unsamflow-pipeline show --stores work/stores --out work/pictures --frame judo/00001.jpg
      unsamflow-pipeline show --stores work/stores --out work/pictures --tracks --count 6
    """
    from unsamflow.pipeline.store.index import Index

    ids = list(frames) or Index.load(stores).frame_ids[:count]
    if not ids:
        raise BadInputError(f"{stores}: the stores hold no frames")
    if tracks:
        click.echo(render_track_strip(stores, ids, out, root))
        return
    for p in render_frames(stores, ids, out, root):
        click.echo(p)
