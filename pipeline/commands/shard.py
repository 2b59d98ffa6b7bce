"""`pipeline shard`: split a manifest into N balanced shards (sequences kept together)."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.shard import sync_shards


@click.command(epilog=EXIT_CODES)
@click.option(
    "--manifest",
    "manifest_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest from `pipeline manifest`.",
)
@click.option("--num-shards", required=True, type=click.IntRange(min=1),
              help="How many shards to make (one store each; at most the number of frames).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for shard-00000-of-0000N.json files.",
)
@click.option("--force", is_flag=True, help="Replace shards of another manifest or shard count in OUT.")
def shard(manifest_file: Path, num_shards: int, out: Path, force: bool) -> None:
    """Write NUM_SHARDS shard manifests of MANIFEST into OUT (a no-op when they are already there).

    Shards are balanced by frame count and keep a sequence together unless it is longer than a shard.

    \b
    Example:
      unsamflow-pipeline shard --manifest work/manifest.json --num-shards 64 --out work/shards
    """
    m = Manifest.load(manifest_file)
    result = sync_shards(m, num_shards, out, force=force)
    n = len(result.paths)
    if n < num_shards:
        click.echo(
            f"note: {num_shards} shards requested, but {len(m.frames)} frames in "
            f"{len(m.sequences())} sequences fill only {n}",
            err=True,
        )
    spread = f"{min(result.sizes)}..{max(result.sizes)} frames each"
    if result.split_sequences:
        spread += f", {result.split_sequences} long sequences split"
    if result.written or result.removed:
        removed = f", removed {len(result.removed)} old shard files" if result.removed else ""
        click.echo(f"{out}: wrote {len(result.written)} of {n} shards ({spread}){removed}")
    else:
        click.echo(f"{out}: {n} shards up to date ({spread})")
