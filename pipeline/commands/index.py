"""`pipeline index`: one index (frame id -> store, row) over a directory of stores."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("index")
@click.option("--stores", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of mask stores (*.h5); index.json is written there.")
def index(store_dir: Path) -> None:
    """Index every store; refuses mixed segmenters/derive configs and duplicate frames."""
    from unsamflow.pipeline.store.index import INDEX_NAME, build_index

    idx = build_index(store_dir)
    click.echo(f"index: {len(idx)} frames ({len(idx.bad_frames)} bad) in {len(idx.shards)} stores "
               f"-> {store_dir / INDEX_NAME}")
