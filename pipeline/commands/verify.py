"""`pipeline verify`: are the stores complete and intact for this manifest? Exit 1 when not."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, emit_json, human_output, json_option


@click.command("verify", epilog=EXIT_CODES)
@click.option("--stores", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of mask stores (*.h5).")
@click.option("--manifest", "manifest_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest the stores were made from.")
@click.option("--no-hash", is_flag=True, help="Re-hash only the source images modified after their store "
              "was written (a stat per frame instead of reading every image).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars; the summary still prints.")
@json_option
def verify(store_dir: Path, manifest_file: Path, no_hash: bool, quiet: bool, as_json: bool) -> None:
    """Check every store and that each manifest frame is stored exactly once.

    \b
    Example:
      unsamflow-pipeline verify --stores work/stores --manifest work/manifest.json --json
    """
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.verify import verify as run_verify

    with human_output(as_json):
        report = run_verify(store_dir, Manifest.load(manifest_file), check_hashes=not no_hash,
                            progress=not quiet)
        click.echo(report.summary())
    status = 0 if report.ok else 1
    if as_json:
        emit_json({"command": "verify", "exit_status": status, **report.to_dict()})
    sys.exit(status)
