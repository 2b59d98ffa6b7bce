"""`python -m unsamflow.trainer report`: the demo's markdown report (model vs zero flow vs DIS, with
pictures)."""

from __future__ import annotations

from pathlib import Path

import click
from unsamflow.pipeline.errors import BadInputError


@click.command("report")
@click.option("--run", "run", required=True, type=click.Path(),
              help="Training run folder (its latest ckpt_*.pt) or a checkpoint file.")
@click.option("--dataset", help="Dataset name of the held-out pairs, e.g. synthetic.")
@click.option("--root", type=click.Path(), help="Root of --dataset (pairs: the list file).")
@click.option("--masks", type=click.Path(file_okay=False), help="Mask stores of --dataset (+mf models).")
@click.option("--real-samples/--no-real-samples", default=True, show_default=True,
              help="Also evaluate the real samples the repository ships (tests/data, or "
                   "$UNSAMFLOW_SHARED_DATA); missing ones are named as skipped.")
@click.option("--refine", is_flag=True, help="Also report the model after per-object homography refinement.")
@click.option("--max-pairs", default=4, show_default=True, type=int, help="Pairs per set.")
@click.option("--pictures", default=2, show_default=True, type=int, help="Pictured pairs per set.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--device", help="torch device (default: cuda when available).")
def report(run, dataset, root, masks, real_samples, refine, max_pairs, pictures, out, device) -> None:
    """Evaluate a trained model beside the zero-flow and DIS baselines; write OUT/report.md with pictures.

    \b
    Example:
      python -m unsamflow.trainer report --run demo_out/run --dataset synthetic --root demo_out/heldout \\
          --masks demo_out/heldout_masks/stores --refine --out demo_out/report
    """
    from unsamflow.trainer.report import ReportSet, build_report, missing_real_samples, real_sample_sets

    if (dataset is None) != (root is None):
        raise BadInputError("--dataset and --root go together")
    if max_pairs < 1 or pictures < 0:
        raise BadInputError(f"--max-pairs must be >= 1 and --pictures >= 0, got {max_pairs}, {pictures}")
    sets = []
    if dataset:
        sets.append(ReportSet(f"{dataset} (held out)", dataset, Path(root), Path(masks) if masks else None))
    notes = []
    if real_samples:
        sets += real_sample_sets()
        skipped = missing_real_samples()
        if skipped:
            click.echo(f"report: {skipped}", err=True)
            notes.append(skipped)
    path = build_report(run, out, sets, device=device, refine=refine, max_pairs=max_pairs, pictures=pictures,
                        notes=notes)  # fmt: skip
    click.echo(f"report: {path}")
