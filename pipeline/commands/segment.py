"""`pipeline segment`: shards -> HDF5 mask stores on a Dask cluster."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from unsamflow.pipeline.cluster import ClusterConfig, open_cluster, preflight
from unsamflow.pipeline.commands.options import (
    EXIT_CODES,
    cluster_options,
    derive_options,
    emit_json,
    human_output,
    json_option,
    quiet_option,
    segmenter_options,
)
from unsamflow.pipeline.dispatch import SegmentResult, plan_shards, segment_shards
from unsamflow.pipeline.errors import BadInputError, PipelineError
from unsamflow.pipeline.lock import output_lock, sweep_temps
from unsamflow.pipeline.segmenters import check_spec
from unsamflow.pipeline.segmenters.base import SegmenterSpec


def shard_files(shards: Path) -> list[Path]:
    """The shard lists in a directory (or one shard file)."""
    if shards.is_file():
        return [shards]
    files = sorted(shards.glob("shard-*.json"))
    if not files:
        raise BadInputError(f"no shard-*.json files in {shards}; run `pipeline shard` first")
    return files


def run_segment(
    shards: Path, out: Path, spec: SegmenterSpec, derive_config: dict, cluster: ClusterConfig,
    retries: int, progress: bool = True, repair: bool = False, check_hashes: bool = True,
    cluster_context=open_cluster,
) -> SegmentResult:
    """Segment what `plan_shards` finds to do (with `repair`, also the shards whose stores are damaged,
    unverifiable or stale, or whose source images changed: each is named on stderr before it is made
    again; `check_hashes`: see plan_shards). `cluster_context(cluster)` gives the client (`run` passes
    one that keeps its cluster for the track stage)."""
    files = shard_files(shards)
    check_spec(spec)
    plan = plan_shards(files, out, spec, derive_config, repair, check_hashes)
    for name, why in sorted(plan.repair.items()):
        click.echo(f"repair {name}: {why}", err=True)
    if not plan.todo:  # nothing to do: no cluster to start
        return segment_shards(files, out, spec, derive_config, None, plan=plan, progress=progress)
    t0 = time.perf_counter()
    with cluster_context(cluster) as client:
        startup = time.perf_counter() - t0
        # A local cluster started with --no-dashboard serves none, whatever link Dask makes up for it.
        has_dashboard = cluster.scheduler or cluster.slurm or cluster.dashboard is not None
        if progress and has_dashboard and client.dashboard_link:
            click.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        result = segment_shards(files, out, spec, derive_config, client, retries=retries, progress=progress,
                                plan=plan, worker_timeout=cluster.worker_timeout,
                                frame_memory=cluster.frame_memory, repair=repair)
        result.startup_s = startup
        if not has_dashboard:
            result.dashboard = None
    if result.failed and not result.written and not result.skipped and not result.stopped:
        click.echo(result.summary())
        first = min(result.failed)
        raise PipelineError(f"every shard failed ({len(result.failed)} of {result.shards}); the first, "
                            f"{first}: {result.failed[first]}")
    return result


def exit_status(result: SegmentResult, skip_bad: bool) -> int:
    """Failed shards always fail the run; bad frames fail it unless the user asked to skip them."""
    if result.failed:
        return 1
    if result.bad and not skip_bad:
        return 1
    return 0


@click.command(epilog=EXIT_CODES)
@click.option("--shards", type=click.Path(exists=True, path_type=Path), required=True,
              help="Directory of shard-*.json (from `pipeline shard`) or one shard file.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the HDF5 stores (one per shard).")
@click.option("--skip-bad", is_flag=True, help="Exit 0 even when some frames were bad (they stay recorded).")
@click.option("--repair", is_flag=True, help="Make again every store `verify` would name (corrupt, without a "
              "checksum file, made from other input, or failing a full read); without it such a store is "
              "refused.")
@segmenter_options
@derive_options
@cluster_options
@quiet_option
@json_option
def segment(shards: Path, out: Path, skip_bad: bool, repair: bool, spec, derive_config, cluster,
            retries: int, quiet: bool, as_json: bool) -> None:
    """Segment every frame of every shard; complete stores are skipped, failed shards retried.

    \b
    Example (SAM ViT-H on 4 local GPU workers; --json for scripts):
      unsamflow-pipeline segment --shards work/shards --out work/stores --checkpoint sam_vit_h_4b8939.pth \\
          --model-type vit_h --workers 4 --json > segment.json
    """
    check_spec(spec)
    preflight(cluster)
    with human_output(as_json):
        with output_lock(out, "pipeline segment"):
            sweep_temps(out)
            result = run_segment(shards, out, spec, derive_config, cluster, retries, progress=not quiet,
                                 repair=repair)
        click.echo(result.summary())
    status = exit_status(result, skip_bad)
    if as_json:
        emit_json({"command": "segment", "exit_status": status, **result.to_dict()})
    sys.exit(status)
