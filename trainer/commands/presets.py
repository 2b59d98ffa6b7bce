"""`python -m unsamflow.trainer presets`: the shipped training presets and what each one is."""

from __future__ import annotations

import click


@click.command("presets")
def presets() -> None:
    """List the training presets (name and one-line description).

    \b
    Example:
      python -m unsamflow.trainer presets
      python -m unsamflow.trainer config --preset kitti-aug-hg-mf     # one of them, resolved
    """
    from unsamflow.trainer.config import list_presets

    items = list_presets()
    width = max(map(len, items), default=0)
    for name, description in items.items():
        click.echo(f"{name:<{width}}  {description}")
