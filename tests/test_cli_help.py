"""Every command of both CLIs explains itself: an example in its --help, help text on every option."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import PIPELINE_ORDER
from unsamflow.pipeline.cli import main as pipeline_main


def _trainer_main():
    from unsamflow.trainer.cli import main

    return main


def commands():
    out = [("pipeline", name, cmd) for name, cmd in pipeline_main.commands.items()]
    out += [("trainer", name, cmd) for name, cmd in _trainer_main().commands.items()]
    return out


def problems(cmd: click.Command) -> list[str]:
    """What a command's help lacks: an example, or help text on a visible option."""
    out = []
    if "Example" not in (cmd.help or ""):
        out.append("no 'Example' in its help")
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip():
            out.append(f"option {p.opts[-1]} has no help text")
    return out


# Trainer commands still lacking an example or an option's help (the trainer is edited by others; the lead
# has the list). Each passes unmarked once fixed: the xfail is not strict.
TRAINER_GAPS: set[str] = set()


def cases():
    for cli, name, cmd in commands():
        marks = [pytest.mark.xfail(reason="trainer help gap, listed for the lead", strict=False)] \
            if cli == "trainer" and name in TRAINER_GAPS else []
        yield pytest.param(cli, name, cmd, marks=marks, id=f"{cli}-{name}")


@pytest.mark.parametrize("cli,name,cmd", cases())
def test_every_command_has_an_example_and_every_option_help(cli, name, cmd):
    assert problems(cmd) == [], f"{cli} {name}"
    runner = CliRunner()
    main = pipeline_main if cli == "pipeline" else _trainer_main()
    res = runner.invoke(main, [name, "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_pipeline_group_lists_commands_in_pipeline_order():
    text = CliRunner().invoke(pipeline_main, ["--help"]).output
    listed = [line.split()[0] for line in text.split("Commands:")[1].splitlines() if line.startswith("  ")
              and line.strip()]
    assert listed[: len(PIPELINE_ORDER)] == [n for n in PIPELINE_ORDER if n in pipeline_main.commands]
    assert listed.index("manifest") < listed.index("segment") < listed.index("verify") < listed.index("show")


def test_help_examples_run_as_written():
    """Every `python -m X` in a --help is a module that runs (before: 16 examples said `python -m trainer`,
    which fails when installed), and every `section.key=` of the trainer's help is a key of the config
    (before: `train --help` showed data.root=, an unknown key)."""
    import re

    from unsamflow.trainer.config import config_to_dict, load_config

    full = config_to_dict(load_config("cpu-demo"))
    bad = []
    for cli, name, _ in commands():
        main = pipeline_main if cli == "pipeline" else _trainer_main()
        text = CliRunner().invoke(main, [name, "--help"]).output
        bad += [f"{cli} {name}: python -m {m}" for m in re.findall(r"python -m ([\w.]+)", text)
                if m not in ("unsamflow.pipeline", "unsamflow.trainer")]  # fmt: skip
        if cli == "trainer":
            for section, key in re.findall(r"(?<![\w./-])([a-z_]+)\.([a-z_]+)(?:\.[\w.]+)?=", text):
                if section not in full or not isinstance(full[section], dict) or key not in full[section]:
                    bad.append(f"trainer {name}: unknown config key {section}.{key}")
    assert bad == []
