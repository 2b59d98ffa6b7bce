"""`pipeline derive`: recompute full_seg and key objects of every store with new thresholds."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, derive_options, quiet_option
from unsamflow.pipeline.lock import output_lock, sweep_temps


@click.command(epilog=EXIT_CODES)
@click.option("--stores", "store_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of mask stores (*.h5).")
@derive_options
@quiet_option
def derive(store_dir: Path, derive_config: dict, quiet: bool) -> None:
    """Re-derive every store from its stored masks (the segmenter is not run again).

    Every store is checked against its checksum file first (one without is read in full), and a damaged
    one stops the command before anything is rewritten. Stores already derived with the same thresholds
    are skipped; each other store is rewritten atomically. An existing index.json is rebuilt afterwards
    (the stores changed).

    \b
    Example (key objects for small frames):
      unsamflow-pipeline derive --stores work/stores --key-min-h 24 --key-min-w 24 --key-min-overlaps 3
    """
    from unsamflow.pipeline.derive import DeriveConfig
    from unsamflow.pipeline.store.index import store_files

    cfg = DeriveConfig.from_dict(derive_config)
    files = store_files(store_dir)
    if not files:
        click.echo(f"no mask stores (*.h5) in {store_dir}")
        return
    with output_lock(store_dir, "pipeline derive"):
        # A killed derive leaves a store-sized temporary; holding the lock, every one is a dead writer's.
        for tmp in sweep_temps(store_dir):
            click.echo(f"removed {tmp.name} (left by a writer that was killed)")
        _derive_all(store_dir, files, cfg, quiet)


def _derive_all(store_dir: Path, files: list[Path], cfg, quiet: bool = False) -> None:
    from unsamflow.pipeline.errors import StoreError
    from unsamflow.pipeline.rederive import rewrite_derived
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.index import (
        INDEX_NAME,
        REPAIR_HINT,
        as_corrupt,
        build_index,
        check_and_open,
    )

    # Every store is checked before any is rewritten: a rewrite re-seals it with a new checksum, which
    # would certify whatever damage it had (a changed score, a point outside the image) as sound.
    for path in files:
        try:
            check_and_open(path).close()
        except StoreError as exc:
            why = as_corrupt(path, exc)
            hint = "" if "--repair" in why else f"; {REPAIR_HINT}"
            raise StoreError(f"derive: {why}; nothing was re-derived{hint}") from None
    done = skipped = 0
    for path in files:
        with MaskStore(path) as store:
            same = store.derive_config == cfg.to_dict()
        if same:
            skipped += 1
            continue
        rewrite_derived(path, cfg)
        done += 1
        if not quiet:
            click.echo(f"re-derived {path.name}")
    click.echo(f"derive: {done} stores re-derived, {skipped} already derived with these thresholds")
    if done and (store_dir / INDEX_NAME).exists():
        build_index(store_dir)
        click.echo(f"index rebuilt: {store_dir / INDEX_NAME}")
