"""`python -m unsamflow.trainer` / `unsamflow-trainer`: evaluate, infer and refine flow."""

from __future__ import annotations

import click
from unsamflow.pipeline.errors import ReportingGroup


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="unsamflow")
def main() -> None:
    """unsamflow trainer: SAM-guided unsupervised optical flow."""


# --- commands (one add_command line each; keep this block sorted) ---
from unsamflow.trainer.commands.config import config  # noqa: E402, I001
from unsamflow.trainer.commands.convert import convert  # noqa: E402, I001
from unsamflow.trainer.commands.evaluate import evaluate  # noqa: E402, I001
from unsamflow.trainer.commands.infer import infer  # noqa: E402, I001
from unsamflow.trainer.commands.presets import presets  # noqa: E402, I001
from unsamflow.trainer.commands.refine import refine  # noqa: E402, I001
from unsamflow.trainer.commands.report import report  # noqa: E402, I001
from unsamflow.trainer.commands.train import train  # noqa: E402, I001
main.add_command(config)
main.add_command(convert)
main.add_command(evaluate)
main.add_command(infer)
main.add_command(presets)
main.add_command(refine)
main.add_command(report)
main.add_command(train)
