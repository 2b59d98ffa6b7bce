"""`python -m unsamflow.trainer infer`: flow for one pair of images (with metrics against --gt), or for
consecutive frames of a folder or video -> flow files + pictures with a stated colour scale."""

from __future__ import annotations

import click
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.commands.evaluate import TEST_SIZE_HELP
from unsamflow.trainer.progress import PairProgress


@click.command("infer")
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False), metavar="[IMG1 IMG2]")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint file (or run folder).")
@click.option("--input", "source", type=click.Path(), help="Folder of frames or a video file.")
@click.option("--gt", type=click.Path(dir_okay=False),
              help="Ground-truth flow (.flo or KITTI PNG) of IMG1 -> IMG2: print the metrics.")
@click.option("--masks", type=click.Path(),
              help="Mask store folder made for this input or a folder above it (+mf models).")
@click.option("--segment", is_flag=True, help="Make full_seg on the spot with the default segmenter.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "flow_format", type=click.Choice(["flo", "kitti-png"]), default="flo",
              show_default=True, help="Flow files: Middlebury .flo (float32) or KITTI 16-bit PNG (1/64 px).")
@click.option("--max-flow", type=float, default=None,
              help="|flow| in px drawn at full colour in every picture (default: each pair's 99th "
                   "percentile, at least 1 px); the legend states the scale and the largest |flow|.")
@click.option("--test-size", default="native", show_default=True, help=TEST_SIZE_HELP)
@click.option("--pad", "pad_mode", type=click.Choice(["center", "bottom-right"]), default="center",
              show_default=True, help="Replicate padding to the network's multiple of 64.")
@click.option("--device", help="torch device (default: cuda when available).")
def infer(images, checkpoint, source, gt, masks, segment, out, flow_format, max_flow, test_size, pad_mode,
          device) -> None:  # fmt: skip
    """Flow of IMG1 -> IMG2 (and its metrics with --gt), or of every consecutive pair of --input: writes
    out/flow/<frame>.flo|png and out/color/<frame>.png (colour wheel legend and scale below each).

    \b
    Examples:
      python -m unsamflow.trainer infer --checkpoint runs/kitti frame1.png frame2.png --gt flow.flo --out one
      python -m unsamflow.trainer infer --checkpoint runs/kitti --input tests/data/video/judo --out judo_flow
      python -m unsamflow.trainer infer --checkpoint runs/kitti --input clip.mp4 --format kitti-png \\
          --out clip_flow
    """
    if images and source:
        raise BadInputError("give either two images (IMG1 IMG2) or --input FOLDER|VIDEO, not both")
    if images and len(images) != 2:
        raise BadInputError(f"give exactly two images IMG1 IMG2, got {len(images)}: {' '.join(images)}")
    if not images and not source:
        raise BadInputError("give two images (IMG1 IMG2) or --input FOLDER|VIDEO")
    if gt and not images:
        raise BadInputError("--gt goes with one pair of images (IMG1 IMG2)")
    if max_flow is not None and not max_flow > 0:
        raise BadInputError(f"--max-flow must be > 0 px, got {max_flow}")
    from unsamflow.trainer.evaluation import infer as run_inference
    from unsamflow.trainer.evaluation import load_network, open_segs, parse_test_size, text_table
    from unsamflow.trainer.evaluation.inference import infer_pair

    predictor, _ = load_network(checkpoint, device, parse_test_size(test_size, ""), pad_mode)
    segs = open_segs(masks, segment)
    if images:
        r = infer_pair(predictor, images[0], images[1], out, gt=gt, flow_format=flow_format, segs=segs,
                       max_flow=max_flow)  # fmt: skip
        panel = f", panel -> {r.panel}" if r.panel else ""
        click.echo(f"flow -> {r.flow_file}, picture -> {r.picture}{panel}")
        if r.metrics is not None:
            click.echo(text_table([(getattr(predictor, "name", "model"), r.metrics)]))
        return
    progress = PairProgress("infer")
    result = run_inference(predictor, source, out, flow_format=flow_format, segs=segs,
                           on_pair=lambda n, total, frame: progress(n, total, frame), max_flow=max_flow)
    progress.close()
    click.echo(f"{result.pairs} flows -> {out}/flow, pictures -> {out}/color")
