"""`pipeline run`: every stage in order, from one config file or flags; each stage skips done work."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click
from unsamflow.pipeline.cluster import preflight
from unsamflow.pipeline.commands.manifest import summary
from unsamflow.pipeline.commands.options import (
    EXIT_CODES,
    cluster_options,
    derive_options,
    emit_json,
    human_output,
    json_option,
    layout_options,
    load_config,
    parse_kv,
    quiet_option,
    segmenter_options,
)
from unsamflow.pipeline.commands.segment import exit_status, run_segment
from unsamflow.pipeline.commands.show import render_frames
from unsamflow.pipeline.commands.track import track_options
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.lock import output_lock, sweep_temps
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segmenters import check_spec


@click.command(epilog=EXIT_CODES)
@click.option("--config", type=click.Path(dir_okay=False), callback=load_config, is_eager=True,
              expose_value=False, help="YAML file whose keys are this command's options (flags override).")
@layout_options(required=False)
@click.option("--root", type=click.Path(exists=True, path_type=Path), default=None,
              help="Dataset root (layout pairs: the list file, or the folder holding it).")
@click.option("--manifest", "manifest_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Use this frame list instead of scanning --root.")
@click.option("--allow-partial", is_flag=True,
              help="Accept a dataset whose counts differ from the known ones.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output directory: manifest.json, shards/, stores/, pictures/.")
@click.option("--shards", "num_shards", type=click.IntRange(min=1), default=8, show_default=True,
              help="Number of shards: one store each, the unit of work, retry and resume on the cluster.")
@click.option("--skip-bad", is_flag=True, help="Exit 0 even when some frames were bad.")
@click.option("--no-hash", is_flag=True, help="verify (and --repair): re-hash only the source images "
              "modified after their store was written, not every one.")
@click.option("--repair", is_flag=True, help="segment: make again every store `verify` would name (corrupt, "
              "without a checksum file, made from other input); without it such a store is refused.")
@click.option("--pictures", type=click.IntRange(min=0), default=3, show_default=True,
              help="Pictures of the first N frames.")
@click.option("--track/--no-track", "do_track", default=True, show_default=True,
              help="Link each sequence's masks into object tracks after segment (see `pipeline track`).")
@segmenter_options
@derive_options
@track_options
@cluster_options
@quiet_option
@json_option
def run(layout, root, layout_opts, manifest_file, allow_partial, out: Path, num_shards, skip_bad, no_hash,
        repair, pictures, spec, derive_config, do_track, track_config, cluster, retries, quiet: bool,
        as_json: bool) -> None:
    """manifest -> shard -> segment (+derive) -> track -> index -> verify -> show, in OUT.

    \b
    Example (KITTI 2015 multi-view with SAM ViT-H; or every option from a YAML file with --config):
      unsamflow-pipeline run --layout kitti-2015 -l multiview=true --root /data/KITTI2015 --out masks \\
          --checkpoint sam_vit_h_4b8939.pth --model-type vit_h --shards 64 --json > run.json
    """
    check_spec(spec)  # a bad segmenter option, model type or checkpoint fails before anything is written
    preflight(cluster)  # and so do TLS files, SLURM's commands, a --scheduler that does not answer
    t0 = time.perf_counter()
    stores = out / "stores"
    summary_: dict = {"command": "run", "out": str(out)}
    with human_output(as_json), output_lock(out, "pipeline run"), output_lock(stores, "pipeline run"):
        for folder in (out, out / "shards", stores, out / "pictures"):
            sweep_temps(folder)
        status = _run(layout, root, layout_opts, manifest_file, allow_partial, out, num_shards, skip_bad,
                      no_hash, pictures, spec, derive_config, cluster, retries, t0, repair, not quiet,
                      summary_, track_config if do_track else None)
    if as_json:
        emit_json({**summary_, "exit_status": status})
    sys.exit(status)


def _run(layout, root, layout_opts, manifest_file, allow_partial, out: Path, num_shards, skip_bad, no_hash,
         pictures, spec, derive_config, cluster, retries, t0: float, repair: bool = False,
         progress: bool = True, summary_: dict | None = None, track_config=None) -> int:
    """The stages in order; `summary_` (the --json object) is filled in as they finish."""
    from unsamflow.pipeline.layouts import check_expected, scan
    from unsamflow.pipeline.shard import write_shards
    from unsamflow.pipeline.store.index import build_index
    from unsamflow.pipeline.verify import verify

    stores = out / "stores"
    manifest_path = out / "manifest.json"
    if manifest_file:
        manifest = Manifest.load(manifest_file)
    else:
        if not (layout and root):
            raise BadInputError("give --layout and --root (or --manifest FILE)")
        manifest = scan(layout, root, **parse_kv(layout_opts, "--layout-option"))
        problems = check_expected(manifest)
        if problems:
            for line in problems:
                click.echo(f"count mismatch: {line}", err=True)
            if not allow_partial:
                raise BadInputError("dataset incomplete (see above); pass --allow-partial to go on")
    _save_if_changed(manifest, manifest_path)
    stages: dict[str, float] = {}
    mark = t0

    def stage(name: str) -> None:  # seconds since the previous stage ended (the first: since the start)
        nonlocal mark
        now = time.perf_counter()
        stages[name], mark = now - mark, now

    stage("manifest")
    click.echo(f"[1/6] manifest: {summary(manifest)} -> {manifest_path}")

    shard_paths = write_shards(manifest, num_shards, out / "shards",
                               remedy="give the --shards count of the earlier run, or another --out")
    stage("shard")
    click.echo(f"[2/6] shard: {len(shard_paths)} shards -> {out / 'shards'}")

    click.echo(f"[3/6] segment with {spec.name} (+derive) ...")
    with contextlib.ExitStack() as clusters:  # one cluster for segment and track, started when needed
        shared = _kept(clusters)
        result = run_segment(out / "shards", stores, spec, derive_config, cluster, retries, progress=progress,
                             cluster_context=shared, repair=repair, check_hashes=not no_hash)
        stage("segment")
        click.echo(result.summary())
        if result.stopped:  # a full disk: the later stages could not write either
            if summary_ is not None:
                summary_.update(manifest=str(manifest_path), frames=len(manifest.frames),
                                shards=len(shard_paths), segment=result.to_dict(), stages_s=stages)
            return 1

        tracked = None
        if track_config is not None and not result.failed:  # failed shards: frames are missing, no tracks
            from unsamflow.pipeline.track import run_track

            tracked = run_track(stores, manifest, track_config, cluster, retries, progress=progress,
                                cluster_context=shared)
            stage("track")
            click.echo(tracked.summary())

    index = build_index(stores, manifest=manifest)  # records the manifest's bad pairs for training
    stage("index")
    click.echo(f"[4/6] index: {len(index.frame_ids)} frames -> {stores / 'index.json'}")

    report = verify(stores, manifest, check_hashes=not no_hash, progress=progress)
    stage("verify")
    click.echo(f"[5/6] verify: {'ok' if report.ok else 'PROBLEMS'}")
    for line in report.lines:
        click.echo(f"  {line}")

    pics = render_frames(stores, index.frame_ids[:pictures], out / "pictures") if pictures else []
    stage("pictures")
    click.echo(f"[6/6] pictures: {len(pics)} -> {out / 'pictures'}")
    times = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    click.echo(f"done in {time.perf_counter() - t0:.1f} s ({times}): stores in {stores}")
    status = exit_status(result, skip_bad)
    if summary_ is not None:
        summary_.update(manifest=str(manifest_path), frames=len(manifest.frames), shards=len(shard_paths),
                        segment=result.to_dict(), index=str(stores / "index.json"), verify=report.to_dict(),
                        pictures=[str(p) for p in pics], stages_s=stages, wall_s=time.perf_counter() - t0,
                        track=tracked.to_dict() if tracked else None)
    if tracked is not None and tracked.failed:
        status = status or 1
    return status or (0 if report.ok or (skip_bad and report.only_bad_frames) else 1)


def _kept(stack: contextlib.ExitStack):
    """A cluster_context that starts the cluster once, keeps it open in `stack` and hands out its client."""
    from unsamflow.pipeline.cluster import open_cluster

    clients: list = []

    def context(cluster):
        if not clients:
            clients.append(stack.enter_context(open_cluster(cluster)))
        return contextlib.nullcontext(clients[0])

    return context


def _save_if_changed(manifest: Manifest, path: Path) -> None:
    """Keep an identical manifest untouched (its hash keys the shards); refuse a different one."""
    if not path.exists():
        manifest.save(path)
    elif Manifest.load(path).to_dict() != manifest.to_dict():
        raise BadInputError(
            f"{path} exists and lists other frames than this run; use another --out "
            "(stores made from the old list would be mixed with the new)"
        )
