"""`pipeline export`: the stores' masks in segment-anything amg.py's folder layout or as COCO RLE JSON."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, quiet_option
from unsamflow.pipeline.interop import FORMATS


@click.command("export", epilog=EXIT_CODES)
@click.option("--stores", "store_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of mask stores with index.json (from `pipeline index` or `run`).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write into (created; files of the same frames are replaced).")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="amg: per frame a folder of 0/255 PNG masks {i}.png + metadata.csv, as segment-anything's "
                   "scripts/amg.py writes; coco-rle: per frame one JSON list of records with COCO RLE "
                   "masks (pycocotools.mask.decode reads them), as amg.py --convert-to-rle writes; "
                   "youtube-vis: one video-instance JSON (videos = sequences, one annotation per track; "
                   "needs --manifest and tracked stores).")
@click.option("--manifest", "manifest_file", default=None, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="youtube-vis: the manifest of the stores (its sequences are the videos).")
@click.option("--frames", default=None, metavar="GLOB",
              help="Only frame ids matching this shell pattern, e.g. 'alley_1/*' (quote it).")
@quiet_option
def export(store_dir: Path, out: Path, fmt: str, manifest_file: Path | None, frames: str | None,
           quiet: bool) -> None:
    """Write the stored masks in amg.py's format (or COCO RLE JSON) for other tools.

    Frame id seq/00001.jpg becomes OUT/seq/00001/ (amg) or OUT/seq/00001.json (coco-rle). Boxes
    (bbox, crop_box) are x, y, w, h in pixels with segment-anything's w = x_max - x_min (pycocotools'
    toBbox gives one more). Bad frames are skipped and listed in OUT/export.json.

    \b
    Example:
      unsamflow-pipeline export --stores work/stores --out work/amg --format amg --frames 'judo/*'
    """
    from unsamflow.pipeline.interop.export import export_stores
    from unsamflow.pipeline.manifest import Manifest

    manifest = Manifest.load(manifest_file) if manifest_file else None
    res = export_stores(store_dir, out, fmt, frames, progress=not quiet, manifest=manifest)
    skipped = f", {len(res.bad_frames)} bad frames skipped" if res.bad_frames else ""
    click.echo(f"export: {len(res.frames)} frames, {res.masks} masks as {fmt} -> {out}{skipped}")
