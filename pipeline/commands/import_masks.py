"""`pipeline import`: masks from amg.py folders or COCO RLE JSON become verified mask stores."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, derive_options, quiet_option
from unsamflow.pipeline.interop import FORMATS


@click.command("import", epilog=EXIT_CODES)
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="amg: per image a folder of {i}.png masks + metadata.csv (segment-anything's amg.py); "
                   "coco-rle: per image one JSON list of records with COCO RLE masks.")
@click.option("--from", "src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder holding the masks: frame seq/00001.jpg's are in seq/00001/ or seq/00001.json "
                   "(or 00001/, 00001.json: amg.py's flat naming).")
@click.option("--manifest", "manifest_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of the frames (from `pipeline manifest`): ids, dataset root, image sizes.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the stores and index.json (must hold no other stores).")
@click.option("--num-stores", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many stores (shards) to split the frames into.")
@click.option("--skip-bad", is_flag=True, help="Exit 0 even when some frames had no usable masks.")
@derive_options
@quiet_option
def import_masks(fmt: str, src: Path, manifest_file: Path, out: Path, num_stores: int, skip_bad: bool,
                 derive_config: dict, quiet: bool) -> None:
    """Turn masks made elsewhere into stores: derived, indexed and verified.

    Each mask must have the frame's size. The stores record "imported from" (format and folder) as
    their producer; a frame without masks there is recorded bad with the reason.

    \b
    Example:
      unsamflow-pipeline import --format amg --from sam_out --manifest work/manifest.json --out work/stores
    """
    from unsamflow.pipeline.interop.importer import import_masks as run_import
    from unsamflow.pipeline.lock import output_lock, sweep_temps

    with output_lock(out, "pipeline import"):
        sweep_temps(out)
        res = run_import(src, fmt, manifest_file, out, derive_config, num_stores, progress=not quiet)
    click.echo(f"import: {res.frames} frames, {res.masks} masks from {src} ({fmt}), {len(res.bad)} bad "
               f"-> {len(res.stores)} stores in {out}")
    click.echo(res.verify.summary())
    ok = res.verify.ok or (skip_bad and res.verify.only_bad_frames)
    sys.exit(0 if ok else 1)
