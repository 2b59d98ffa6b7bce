"""`python -m unsamflow.pipeline` / `unsamflow-pipeline`: one command per stage, each idempotent."""

from __future__ import annotations

import click
from unsamflow.pipeline.errors import ReportingGroup

# `--help` lists the commands in the order a job uses them, not alphabetically.
PIPELINE_ORDER = ("manifest", "shard", "segment", "derive", "track", "index", "verify", "show", "run",
                  "import", "export", "inspect", "segmenters", "synth", "show-flow")


class PipelineGroup(ReportingGroup):
    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [n for n in PIPELINE_ORDER if n in self.commands]
        return known + sorted(set(self.commands) - set(known))


@click.group(cls=PipelineGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status of every command: 0 success; 1 bad frames or failed checks; 2 usage or "
                    "input error. Progress bars go to stderr, only on a terminal (-q or TQDM_DISABLE=1: "
                    "never).")
@click.version_option(package_name="unsamflow")
def main() -> None:
    """unsamflow mask pipeline: manifest -> shard -> segment -> derive -> index/verify -> show.

    \b
    Example (the whole pipeline on the frames the repository ships):
      unsamflow-pipeline run --layout folder --root tests/data/video --out work --shards 2 --workers 2
    """


# --- commands (one add_command line each; keep this block sorted) ---
from unsamflow.pipeline.commands.derive import derive  # noqa: E402, I001
main.add_command(derive)
from unsamflow.pipeline.commands.export import export  # noqa: E402, I001
main.add_command(export)
from unsamflow.pipeline.commands.import_masks import import_masks  # noqa: E402, I001
main.add_command(import_masks)
from unsamflow.pipeline.commands.index import index  # noqa: E402, I001
main.add_command(index)
from unsamflow.pipeline.commands.inspect_store import inspect_store  # noqa: E402, I001
main.add_command(inspect_store)
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
from unsamflow.pipeline.commands.track import track  # noqa: E402, I001
main.add_command(track)
from unsamflow.pipeline.commands.verify import verify  # noqa: E402, I001
main.add_command(verify)
