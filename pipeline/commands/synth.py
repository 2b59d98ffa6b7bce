"""`pipeline synth`: generate synthetic scenes with exact ground truth (pipeline.synthetic.dataset)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES, quiet_option
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.synthetic.dataset import generate_dataset
from unsamflow.pipeline.synthetic.scenes import DIFFICULTIES


def parse_size(text: str) -> tuple[int, int]:
    """'256x320' -> (256, 320) (height x width)."""
    h, sep, w = text.lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit():
        raise BadInputError(f"--size must be HEIGHTxWIDTH, e.g. 256x320, got {text!r}")
    return int(h), int(w)


@click.command(epilog=EXIT_CODES)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the Sintel-like tree and manifest.json into.")
@click.option("--sequences", type=click.IntRange(min=1), default=4, show_default=True,
              help="Number of sequences (scenes) to generate.")
@click.option("--frames", type=click.IntRange(min=2), default=2, show_default=True,
              help="Frames per sequence.")
@click.option("--size", default="256x320", show_default=True,
              help="Frame size HEIGHTxWIDTH in pixels (rows x columns, as everywhere in unsamflow).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed: the same seed and options give the same frames and flow, bit for bit.")
@click.option("--difficulty", type=click.Choice(sorted(DIFFICULTIES)), default="medium", show_default=True,
              help="easy: few objects, slow; medium: + lighting change and noise; hard: many, fast objects.")
@quiet_option
def synth(out: Path, sequences: int, frames: int, size: str, seed: int, difficulty: str, quiet: bool) -> None:
    """Textured layers under homographies: frames, forward/backward flow, occlusions, instances.

    Idempotent: the same arguments on a finished folder do nothing; an interrupted run resumes.

    \b
    Example:
      unsamflow-pipeline synth --out work/synthetic --sequences 6 --frames 4 --size 256x320 --seed 0
    """
    start = time.perf_counter()
    hw = parse_size(size)
    manifest, made = generate_dataset(out, sequences, frames, hw, seed, difficulty, progress=not quiet)
    if made == 0:
        click.echo(f"{out}: up to date ({len(manifest.pairs)} pairs, seed {seed}, {difficulty})")
        return
    click.echo(
        f"{out}: {len(manifest.sequences())} sequences, {len(manifest.frames)} frames, "
        f"{len(manifest.pairs)} pairs with flow ({made} sequences generated now, "
        f"{time.perf_counter() - start:.1f} s); manifest: {out / 'manifest.json'}"
    )
