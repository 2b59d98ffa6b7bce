"""`python -m pipeline` / `unsamflow-pipeline`: one command per stage, each idempotent."""

from __future__ import annotations

import sys

import click

from pipeline.errors import PipelineError


class _Group(click.Group):
    """Turns PipelineError into one clear line and a non-zero exit instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unsamflow")
def main() -> None:
    """unsamflow mask pipeline: manifest -> shard -> segment -> derive -> index/verify -> show."""


# --- commands (one add_command line each; keep this block sorted) ---
