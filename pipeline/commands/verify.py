"""`pipeline verify`: are the stores complete and intact for this manifest? Exit 1 when not."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("verify")
@click.option("--stores", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of mask stores (*.h5).")
@click.option("--manifest", "manifest_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest the stores were made from.")
@click.option("--no-hash", is_flag=True, help="Skip re-hashing the source images (faster).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def verify(store_dir: Path, manifest_file: Path, no_hash: bool, quiet: bool) -> None:
    """Check every store and that each manifest frame is stored exactly once."""
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.verify import verify as run_verify

    report = run_verify(store_dir, Manifest.load(manifest_file), check_hashes=not no_hash, progress=not quiet)
    click.echo(report.summary())
    sys.exit(0 if report.ok else 1)
