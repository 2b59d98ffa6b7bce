"""`pipeline manifest`: scan a dataset root into a frame list, checked against the known counts."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, layout_options, parse_kv
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts import check_expected, counts, scan
from unsamflow.pipeline.manifest import Manifest


def save_manifest(manifest: Manifest, out: Path) -> str:
    """Write unless `out` already holds the same manifest; returns 'written', 'updated' or 'up to date'.

    Leaving an identical file untouched keeps its mtime, so later stages see nothing new.
    """
    if out.is_file():
        try:
            same = Manifest.load(out).to_dict() == manifest.to_dict()
        except BadInputError:
            same = False  # not a manifest (or a broken one): replace it
        if same:
            return "up to date"
        manifest.save(out)
        return "updated"
    manifest.save(out)
    return "written"


def summary(manifest: Manifest) -> str:
    c = counts(manifest)
    return (
        f"{manifest.layout} {manifest.root}: {c['frames']} frames in {c['sequences']} sequences, "
        f"{c['pairs']} pairs ({c['pairs_with_gt']} with ground truth)"
    )


@click.command(epilog=EXIT_CODES)
@layout_options(required=True)
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest file to write (JSON).")
@click.option("--allow-partial", is_flag=True,
              help="Write the manifest even when the counts differ from data_manifests/<layout>.yaml.")
# The flags of earlier versions, kept working but hidden: -l KEY=VALUE is the one syntax.
@click.option("--split", default=None, hidden=True)
@click.option("--pass", "passes", multiple=True, hidden=True)
@click.option("--multiview/--no-multiview", default=None, hidden=True)
@click.option("--gray/--no-gray", default=None, hidden=True)
def manifest(
    layout: str,
    layout_opts: tuple[str, ...],
    root: Path,
    out: Path,
    allow_partial: bool,
    split: str | None,
    passes: tuple[str, ...],
    multiview: bool | None,
    gray: bool | None,
) -> None:
    """Scan ROOT in LAYOUT into a frame list (frames, sequences, pairs with ground-truth paths).

    \b
    Example (Sintel's final pass only; the counts are checked against the full download):
      unsamflow-pipeline manifest --layout sintel --root /data/MPI-Sintel -l passes=final \\
          --out work/manifest.json
    """
    opts = parse_kv(layout_opts, "--layout-option")
    legacy = {"split": split, "passes": list(passes) or None, "multiview": multiview, "gray": gray}
    opts.update({k: v for k, v in legacy.items() if v is not None})
    m = scan(layout, root, **opts)
    click.echo(summary(m))
    ignored = m.meta.get("ignored")
    if ignored:
        click.echo(
            f"note: {ignored['count']} files are not part of the {layout} layout and were skipped, "
            f"e.g. {', '.join(ignored['examples'][:3])}",
            err=True,
        )
    if m.meta.get("missing_dirs"):
        click.echo(f"note: missing folders: {', '.join(m.meta['missing_dirs'])}", err=True)

    problems = check_expected(m)
    for line in problems:
        click.echo(f"count mismatch: {line}", err=True)
    if problems and not allow_partial:
        raise BadInputError(
            f"{root} does not hold the complete {layout} dataset ({len(problems)} mismatch(es) above); "
            f"{out} was not written. Pass --allow-partial to write it anyway"
        )
    status = save_manifest(m, out)
    click.echo(f"{out}: {status}")
    if problems:
        click.echo(f"warning: {out} lists an incomplete {layout} dataset (--allow-partial)", err=True)
