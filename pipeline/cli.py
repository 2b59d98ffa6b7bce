"""`python -m pipeline` / `unsamflow-pipeline`: one command per stage, each idempotent."""

from __future__ import annotations

import click
from unsamflow.pipeline.errors import ReportingGroup


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unsamflow")
def main() -> None:
    """unsamflow mask pipeline: manifest -> shard -> segment -> derive -> index/verify -> show."""


# --- commands (one add_command line each; keep this block sorted) ---
from unsamflow.pipeline.commands.derive import derive  # noqa: E402, I001
main.add_command(derive)
from unsamflow.pipeline.commands.index import index  # noqa: E402, I001
main.add_command(index)
from unsamflow.pipeline.commands.manifest import manifest  # noqa: E402, I001
main.add_command(manifest)
from unsamflow.pipeline.commands.run import run  # noqa: E402, I001
main.add_command(run)
from unsamflow.pipeline.commands.segment import segment  # noqa: E402, I001
main.add_command(segment)
from unsamflow.pipeline.commands.segmenters import segmenters  # noqa: E402, I001
main.add_command(segmenters)
from unsamflow.pipeline.commands.shard import shard  # noqa: E402, I001
main.add_command(shard)
from unsamflow.pipeline.commands.show import show  # noqa: E402, I001
main.add_command(show)
from unsamflow.pipeline.commands.show_flow import show_flow  # noqa: E402, I001
main.add_command(show_flow)
from unsamflow.pipeline.commands.synth import synth  # noqa: E402, I001
main.add_command(synth)
from unsamflow.pipeline.commands.verify import verify  # noqa: E402, I001
main.add_command(verify)
