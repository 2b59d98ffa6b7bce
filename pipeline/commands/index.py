"""`pipeline index`: one index (frame id -> store, row) over a directory of stores."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES


@click.command("index", epilog=EXIT_CODES)
@click.option("--stores", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of mask stores (*.h5); index.json is written there.")
@click.option("--manifest", "manifest_file", type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest the stores were made from: the index then lists its bad pairs "
                   "(a bad frame, or frames of different sizes), which training leaves out.")
def index(store_dir: Path, manifest_file: Path | None) -> None:
    """Index every store; refuses mixed segmenters/derive configs, duplicate frames and corrupt stores.

    Each store is checked against its checksum file first; one without (older stores) is read in full
    and its checksum file recorded. Holds the directory's write lock, like every writer of stores.

    \b
    Example:
      unsamflow-pipeline index --stores work/stores --manifest work/manifest.json
    """
    from unsamflow.pipeline.lock import output_lock, sweep_temps
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.store.index import INDEX_NAME, build_index, store_files

    manifest = Manifest.load(manifest_file) if manifest_file else None
    store_files(store_dir)  # a missing directory is named, not created by the lock
    with output_lock(store_dir, "pipeline index"):
        sweep_temps(store_dir)
        idx = build_index(store_dir, manifest=manifest)
    pairs = f", {len(idx.bad_pairs)} bad pairs" if manifest else ""
    click.echo(f"index: {len(idx)} frames ({len(idx.bad_frames)} bad{pairs}) in {len(idx.shards)} stores "
               f"-> {store_dir / INDEX_NAME}")
