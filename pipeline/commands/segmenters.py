"""`pipeline segmenters`: what can segment, and every option each one takes."""

from __future__ import annotations

import inspect

import click
from unsamflow.pipeline.segmenters import available_segmenters, resolve_factory


@click.command()
def segmenters() -> None:
    """List the segmenters and their options (pass them as -o KEY=VALUE)."""
    for name in available_segmenters():
        factory = resolve_factory(name)
        click.echo(f"{name}: {(inspect.getdoc(factory) or '').splitlines()[0]}")
        for p in inspect.signature(factory).parameters.values():
            default = "(required)" if p.default is p.empty else f"= {p.default!r}"
            click.echo(f"    {p.name} {default}")
    click.echo("any other: a 'module:factory' path, or an entry point in group 'unsamflow.segmenters'")

