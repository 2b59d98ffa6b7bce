"""`pipeline inspect`: what a store holds, readable without knowing the format."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES


def describe_layout(path: Path) -> list[str]:
    """Root attributes and every dataset (shape, dtype, description), in file order."""
    import h5py

    lines = []
    with h5py.File(path, "r", locking=False) as h5:
        for k, v in h5.attrs.items():
            text = v.decode() if isinstance(v, bytes) else str(v)
            lines.append(f"@{k}: {text if len(text) <= 300 else text[:300] + ' ...'}")

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                desc = obj.attrs.get("description", "(no description: written before they were recorded)")
                lines.append(f"{name}  {obj.dtype} {obj.shape}: {desc}")

        h5.visititems(visit)
    return lines


def frame_summary(store, key) -> list[str]:
    """One frame: id, size, masks with their area range, full_seg labels, key objects."""
    fm = store.read(key)
    h, w = fm.image_shape
    n = len(fm.area)
    areas = f", area {int(fm.area.min())}..{int(fm.area.max())} px" if n else ""
    return [f"frame {fm.frame_id!r}: {h}x{w} (HxW), sha256 {fm.sha256[:12]}...",
            f"  masks: {n}{areas}; first bbox (x, y, w, h): {fm.bbox[0].tolist() if n else None}",
            f"  full_seg: {fm.full_seg.dtype} labels 0..{int(fm.full_seg.max()) if fm.full_seg.size else 0}",
            f"  key objects: {fm.key_objects.tolist()}"]


@click.command("inspect", epilog=EXIT_CODES)
@click.argument("store", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--frame", default=None, help="Frame id (or row number) to summarise. Default: row 0.")
def inspect_store(store: Path, frame: str | None) -> None:
    """Print a store's layout (attributes, datasets with shape, dtype and meaning) and one frame.

    The same descriptions are in each dataset's `description` attribute, for h5py or h5dump users.

    \b
    Example:
      unsamflow-pipeline inspect work/stores/shard-00000-of-00002.h5 --frame judo/00001.jpg
    """
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.integrity import StoreUnverifiable, check_store_file

    try:
        check_store_file(store)  # a damaged file is named before HDF5 parses it
    except StoreUnverifiable as exc:
        click.echo(f"note: {exc}", err=True)
    for line in describe_layout(store):
        click.echo(line)
    with MaskStore(store) as ms:
        click.echo(f"{len(ms)} frames, {len(ms.bad_frames)} bad")
        if len(ms):
            key = int(frame) if frame is not None and frame.isdigit() and frame not in ms else frame
            for line in frame_summary(ms, 0 if key is None else key):
                click.echo(line)
