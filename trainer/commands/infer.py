"""`python -m trainer infer`: flow for consecutive frames of a folder or video -> flow files + pictures."""

from __future__ import annotations

import click
from unsamflow.trainer.commands.evaluate import TEST_SIZE_HELP


@click.command("infer")
@click.option("--checkpoint", required=True, type=click.Path(), help="Checkpoint file (or run folder).")
@click.option("--input", "source", required=True, type=click.Path(), help="Folder of frames or a video file.")
@click.option("--masks", type=click.Path(), help="Mask store folder made for this input (+mf models).")
@click.option("--segment", is_flag=True, help="Make full_seg on the spot with the default segmenter.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--format", "flow_format", type=click.Choice(["flo", "kitti-png"]), default="flo",
              show_default=True, help="Flow files: Middlebury .flo (float32) or KITTI 16-bit PNG (1/64 px).")
@click.option("--test-size", default="native", show_default=True, help=TEST_SIZE_HELP)
@click.option("--pad", "pad_mode", type=click.Choice(["center", "bottom-right"]), default="center",
              show_default=True, help="Replicate padding to the network's multiple of 64.")
@click.option("--device", help="torch device (default: cuda when available).")
def infer(checkpoint, source, masks, segment, out, flow_format, test_size, pad_mode, device) -> None:
    """Write out/flow/<frame>.flo|png and out/color/<frame>.png for every consecutive pair of frames.

    \b
    Example:
      python -m unsamflow.trainer infer --checkpoint runs/kitti --input tests/data/video/judo --out judo_flow
      python -m unsamflow.trainer infer --checkpoint runs/kitti --input clip.mp4 --format kitti-png \\
          --out clip_flow
    """
    from unsamflow.trainer.evaluation import infer as run_inference
    from unsamflow.trainer.evaluation import load_network, open_segs, parse_test_size

    predictor, _ = load_network(checkpoint, device, parse_test_size(test_size, ""), pad_mode)
    segs = open_segs(masks, segment)

    def progress(n: int, total: int, frame: str) -> None:
        click.echo(f"\r{n}/{total} {frame}", nl=False, err=True)

    result = run_inference(predictor, source, out, flow_format=flow_format, segs=segs, on_pair=progress)
    click.echo("", err=True)
    click.echo(f"{result.pairs} flows -> {out}/flow, pictures -> {out}/color")
