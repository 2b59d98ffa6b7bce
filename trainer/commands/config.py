"""`python -m unsamflow.trainer config`: print a preset resolved (inheritance, overrides) and validated."""

from __future__ import annotations

import json

import click


@click.command("config")
@click.option("--preset", "-p", required=True,
              help="Preset name (see `trainer presets`) or path of a YAML config file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of YAML.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def config(preset: str, as_json: bool, overrides: tuple[str, ...]) -> None:
    """Print the resolved training config; KEY=VALUE overrides any key (VALUE read as YAML).

    \b
    Examples:
      python -m unsamflow.trainer config --preset kitti-aug-hg-mf
      python -m unsamflow.trainer config --preset sintel-base optim.lr=2e-4 data.crop=[320,768] \
          stages.1.w_ar=0.05
      python -m unsamflow.trainer config --preset cpu-demo --json > demo.json
    """
    import yaml
    from unsamflow.trainer.config import config_to_dict, load_config

    data = config_to_dict(load_config(preset, overrides))
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=110).rstrip())
