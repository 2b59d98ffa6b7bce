"""`pipeline track`: object tracks through each sequence, written into the stores (pipeline.track)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click
from unsamflow.pipeline.commands.options import (
    EXIT_CODES,
    cluster_options,
    emit_json,
    human_output,
    json_option,
    parse_kv,
    quiet_option,
)
from unsamflow.pipeline.lock import output_lock, sweep_temps

# What --flow-checkpoint stands for (trainer/evaluation/track_flow.py, loaded only when asked for).
FLOW_CHECKPOINT_PLUGIN = "unsamflow.trainer.evaluation.track_flow:checkpoint_flow"


def track_options(f):
    """Linker, flow, gap and IoU threshold -> kwargs['track_config'] (a TrackConfig)."""
    from unsamflow.pipeline.linker import LINKERS, TrackConfig

    d = TrackConfig()

    @click.option("--linker", type=click.Choice(LINKERS), default=d.linker, show_default=True,
                  help="flow: carry each track by optical flow before matching; iou: match by IoU at the "
                       "same place (no flow); sam2: SAM 2's video predictor carries masks ([sam2] extra).")
    @click.option("--flow", default=d.flow, show_default=True, metavar="dis|MODULE:FACTORY",
                  help="The flow of --linker flow: OpenCV DIS, or a plug-in factory returning "
                       "flow(new_rgb, old_rgb) -> (H, W, 2) (e.g. a trained network).")
    @click.option("--flow-option", "-f", "flow_opts", multiple=True, metavar="KEY=VALUE",
                  help="Option of the flow or linker (dis: preset=ultrafast|fast|medium; sam2: "
                       "checkpoint=..., model_type=..., device=...).")
    @click.option("--flow-checkpoint", type=click.Path(exists=True, path_type=Path), default=None,
                  metavar="CKPT|RUN", help="A trained network (checkpoint or run folder, without +mf) as the "
                  "flow of --linker flow: the trainer's flow plug-in (trainer/evaluation/track_flow.py).")
    @click.option("--gap", type=click.IntRange(min=0), default=d.gap, show_default=True,
                  help="Frames a track may go unmatched (occluded, missed) and still keep its id.")
    @click.option("--min-iou", type=click.FloatRange(0, 1, min_open=True), default=d.min_iou,
                  show_default=True, help="Least IoU of a carried track and a mask that counts as a match.")
    @functools.wraps(f)
    def wrapper(*args, linker, flow, flow_opts, flow_checkpoint, gap, min_iou, **kwargs):
        options = parse_kv(flow_opts, "--flow-option")
        if flow_checkpoint is not None:  # a plug-in by name: the pipeline never imports the trainer itself
            flow, options = FLOW_CHECKPOINT_PLUGIN, {**options, "checkpoint": str(flow_checkpoint.resolve())}
        kwargs["track_config"] = TrackConfig(linker=linker, flow=flow, gap=gap, min_iou=min_iou,
                                             options=options)
        return f(*args, **kwargs)

    return wrapper


@click.command(epilog=EXIT_CODES)
@click.option("--stores", "store_dir", required=True, type=click.Path(exists=True, file_okay=False,
              path_type=Path), help="Directory of mask stores (*.h5).")
@click.option("--manifest", "manifest_file", required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="The manifest the stores were made from (its sequences and frame order).")
@track_options
@cluster_options
@quiet_option
@json_option
def track(store_dir: Path, manifest_file: Path, track_config, cluster, retries: int, quiet: bool,
          as_json: bool) -> None:
    """Link each sequence's masks into tracks and write a track id per mask and key object.

    One Dask task per sequence; each store is rewritten (atomically) once its sequences are linked.
    Stores already tracked with the same options are skipped, so a killed run resumes.

    \b
    Example (DIS flow, tracks survive 2 missed frames):
      unsamflow-pipeline track --stores work/stores --manifest work/manifest.json --gap 2
    """
    from unsamflow.pipeline.manifest import Manifest
    from unsamflow.pipeline.track import run_track

    manifest = Manifest.load(manifest_file)
    with human_output(as_json), output_lock(store_dir, "pipeline track"):
        for tmp in sweep_temps(store_dir):
            click.echo(f"removed {tmp.name} (left by a writer that was killed)", err=True)
        result = run_track(store_dir, manifest, track_config, cluster, retries, progress=not quiet)
        click.echo(result.summary())
    status = 1 if result.failed else 0
    if as_json:
        emit_json({"command": "track", "exit_status": status, **result.to_dict()})
    sys.exit(status)
