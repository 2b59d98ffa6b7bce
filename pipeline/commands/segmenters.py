"""`pipeline segmenters`: what can segment, and every option each one takes, with what it means."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import click
from unsamflow.pipeline.commands.options import EXIT_CODES
from unsamflow.pipeline.segmenters import available_segmenters, resolve_factory

_ENTRY = re.compile(r"^(\s*)([A-Za-z_]\w*)(?: \((?:[^()]|\([^()]*\))*\))?: (.*)$")


def option_docs(*docs: str) -> dict[str, str]:
    """name -> description from Google-style "Arguments:"/"Args:" sections (`name (type): text` plus
    continuation lines indented deeper); the first doc that describes a name wins."""
    out: dict[str, str] = {}
    for doc in docs:
        current, indent = None, 0
        for line in (doc or "").splitlines():
            depth = len(line) - len(line.lstrip())
            if current and line.strip() and depth > indent:
                out[current] += " " + line.strip()
                continue
            current = None
            m = _ENTRY.match(line)
            if m and m.group(2) not in out:
                current, indent = m.group(2), len(m.group(1))
                out[current] = m.group(3).strip()
    return out


def _docs(factory) -> list[str]:
    docs = [inspect.getdoc(factory) or ""]
    if "SamAutomaticMaskGenerator" in docs[0]:  # sam passes the generator's options through: its docstring
        from segment_anything import SamAutomaticMaskGenerator

        docs.append(inspect.getdoc(SamAutomaticMaskGenerator.__init__) or "")
    return docs


@click.command(epilog=EXIT_CODES)
@click.option("--tiny-checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="PATH",
              help="Write a randomly initialised vit_tiny SAM checkpoint to PATH and exit: for smoke tests "
                   "of the SAM path (--model-type vit_tiny); its masks mean nothing.")
def segmenters(tiny_checkpoint: Path | None) -> None:
    """List the segmenters and their options (pass them as -o KEY=VALUE) with what each means.

    \b
    Example:
      unsamflow-pipeline segmenters
      unsamflow-pipeline segmenters --tiny-checkpoint work/tiny.pth   # then: --checkpoint work/tiny.pth \\
          --model-type vit_tiny
    """
    if tiny_checkpoint is not None:
        from unsamflow.pipeline.segmenters.sam import write_tiny_sam_checkpoint

        click.echo(f"{write_tiny_sam_checkpoint(tiny_checkpoint)}: vit_tiny checkpoint (random weights)")
        return
    for name in available_segmenters():
        factory = resolve_factory(name)
        docs = _docs(factory)
        meaning = option_docs(*docs)
        click.echo(f"{name}: {docs[0].splitlines()[0] if docs[0] else ''}")
        for p in inspect.signature(factory).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            default = "(required)" if p.default is p.empty else f"= {p.default!r}"
            click.echo(f"    {p.name} {default}")
            # segment-anything's docstring spells two of its options crops_*
            text = meaning.get(p.name) or meaning.get(p.name.replace("crop_", "crops_", 1))
            if text:
                click.echo(textwrap.fill(text, 100, initial_indent=" " * 8, subsequent_indent=" " * 8))
    click.echo("any other: a 'module:factory' path, or an entry point in group 'unsamflow.segmenters'")
