"""`python -m unsamflow.trainer evaluate`: a checkpoint (or a baseline) over a flow dataset -> metrics
table + JSON."""

from __future__ import annotations

import json

import click
from unsamflow.pipeline.errors import BadInputError

TEST_SIZE_HELP = ("default (Sintel 448x1024, KITTI 256x832, others native), native (pad only) or HxW; "
                  "frames are resized, the flow resized and rescaled back")  # fmt: skip


def build_predictor(checkpoint, baseline, device, test_size, dataset, pad_mode):
    """The network of --checkpoint, or the --baseline (zero | dis)."""
    from unsamflow.trainer.evaluation import DISFlow, ZeroFlow, load_network, parse_test_size

    if (checkpoint is None) == (baseline is None):
        raise BadInputError("give exactly one of --checkpoint FILE and --baseline zero|dis")
    if baseline is not None:
        return (ZeroFlow() if baseline == "zero" else DISFlow()), None
    predictor, _ = load_network(checkpoint, device, parse_test_size(test_size, dataset), pad_mode)
    return predictor, predictor.source


@click.command("evaluate")
@click.option("--checkpoint", type=click.Path(), help="Checkpoint file (or run folder: its latest).")
@click.option("--baseline", type=click.Choice(["zero", "dis"]), help="Evaluate a baseline instead.")
@click.option("--dataset", required=True,
              help="Dataset name, e.g. sintel-final-training, sintel-clean, kitti-2015, flyingchairs, hd1k, "
                   "or pairs (a list file: --root pairs.csv); the names train and pipeline take.")
@click.option("--root", required=True, type=click.Path(),
              help="Dataset root folder (for `pairs`: the list file, or the folder holding "
                   "pairs.txt|csv|json).")
@click.option("--masks", type=click.Path(), help="Mask store folder (with index.json) covering the dataset.")
@click.option("--segment", is_flag=True, help="Make full_seg on the spot with the default segmenter.")
@click.option("--refine", is_flag=True, help="Also report metrics after per-object homography refinement.")
@click.option("--refine-rule", type=click.Choice(["any", "loss", "one-motion"]), default="one-motion",
              show_default=True, help="The rule --refine uses (see `refine --help`; 'loss' needs occlusion, "
                                      "which evaluate does not have).")  # fmt: skip
@click.option("--write-outputs", type=click.Path(file_okay=False), help="Write flows and pictures here.")
@click.option("--format", "flow_format", type=click.Choice(["flo", "kitti-png"]), default="flo",
              show_default=True, help="Flow file format for --write-outputs.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the metrics as JSON.")
@click.option("--test-size", default="default", show_default=True, help=TEST_SIZE_HELP)
@click.option("--pad", "pad_mode", type=click.Choice(["center", "bottom-right"]), default="center",
              show_default=True, help="Replicate padding to the network's multiple of 64.")
@click.option("--max-pairs", type=int, help="Evaluate only the first N pairs.")
@click.option("--device", help="torch device (default: cuda when available).")
def evaluate(checkpoint, baseline, dataset, root, masks, segment, refine, refine_rule, write_outputs,
             flow_format, json_path, test_size, pad_mode, max_pairs, device) -> None:  # fmt: skip
    """Run a model over a flow dataset with ground truth; print the metrics (ptlflow names).

    \b
    Example:
      python -m unsamflow.trainer evaluate --checkpoint runs/kitti --dataset kitti-2015-training \\
          --root /data/KITTI2015 --masks /data/kitti_masks/stores --refine --json kitti.json
      python -m unsamflow.trainer evaluate --baseline dis --dataset sintel-clean-training \\
          --root tests/data/sintel
    """
    from unsamflow.pipeline.atomic import write_bytes_atomic
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.trainer.evaluation import evaluate as run_evaluation
    from unsamflow.trainer.evaluation import open_segs, text_table

    predictor, source = build_predictor(checkpoint, baseline, device, test_size, dataset, pad_mode)
    ds = open_dataset(dataset, root, gt_only=True)
    if max_pairs is not None and max_pairs < 1:
        raise BadInputError(f"--max-pairs must be >= 1, got {max_pairs}")
    indices = range(min(len(ds), max_pairs)) if max_pairs else None
    segs = open_segs(masks, segment)

    from unsamflow.trainer.progress import PairProgress

    bar = PairProgress("evaluate")

    def progress(n: int, total: int, r) -> None:
        bar(n + 1, total, r.frame1)

    result = run_evaluation(
        predictor, ds, dataset, segs=segs, refine={"rule": refine_rule} if refine else False, indices=indices,
        write_outputs=write_outputs,
        flow_format=flow_format, on_pair=progress,
    )
    bar.close()
    rows = [(result.predictor, result.metrics)] + ([("+ refine", result.refined)] if refine else [])
    click.echo(f"{dataset} ({len(result.pairs)} pairs, {result.aggregate} aggregation, "
               f"{result.seconds_per_pair:.2f} s/pair)")  # fmt: skip
    click.echo(text_table(rows))
    if json_path:
        doc = {"checkpoint": source, "baseline": baseline, "root": str(root), "masks": masks,
               "test_size": test_size, "pad": pad_mode, **result.to_dict()}  # fmt: skip
        write_bytes_atomic(json_path, json.dumps(doc, indent=1).encode())
        click.echo(f"metrics -> {json_path}")
