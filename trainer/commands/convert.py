"""`unsamflow-trainer convert`: checkpoints of the reference implementation (and ARFlow) to ours and back."""

from __future__ import annotations

import click
from unsamflow.pipeline.errors import BadInputError


@click.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--from", "src_format", type=click.Choice(["reference"]),
              help="CHECKPOINT is in the reference's (UnSAMFlow / ARFlow) format: write an unsamflow one.")
@click.option("--to", "dst_format", type=click.Choice(["reference"]),
              help="CHECKPOINT is an unsamflow one: write its network in the reference's format.")
@click.option("--preset", help="With --from: the preset whose config the new checkpoint carries "
                               "(default: kitti-aug-hg-mf with mask features, else kitti-base).")
@click.option("--allow-missing", is_flag=True,
              help="With --from: accept a checkpoint without the learned upsampler (ARFlow, SemARFlow); "
                   "ours then keeps its initial weights there.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The checkpoint to write.")
def convert(checkpoint, src_format, dst_format, preset, allow_missing, out) -> None:
    """Convert CHECKPOINT between the reference's format and unsamflow's.

    \b
    The reference (facebookresearch/UnSAMFlow) saves {'epoch', 'iter', 'state_dict', ...}; its PWC-Lite and
    ours hold the same tensors under other names, so the network gives the same flow after conversion.
    evaluate / infer / train model.init_from= also take a reference checkpoint directly.

    \b
    Examples:
      unsamflow-trainer convert --from reference kitti_ckpt.pth.tar --preset kitti-aug-hg-mf --out kitti.pt
      unsamflow-trainer convert --to reference runs/kitti/checkpoints/ckpt_0200000.pt --out kitti_ref.pth
    """
    from unsamflow.trainer.convert import to_reference_checkpoint, to_unsamflow_checkpoint

    if bool(src_format) == bool(dst_format):
        raise BadInputError("give exactly one of --from reference or --to reference")
    if dst_format and (preset or allow_missing):
        raise BadInputError("--preset and --allow-missing go with --from reference")
    if src_format:
        written = to_unsamflow_checkpoint(checkpoint, out, preset=preset, allow_missing=allow_missing)
    else:
        written = to_reference_checkpoint(checkpoint, out)
    click.echo(f"{checkpoint} -> {written}")
