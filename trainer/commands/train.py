"""`python -m unsamflow.trainer train`: train a flow network from a preset (one process, or one per device
under torchrun), writing RUN_DIR/config.yaml, checkpoints/, tensorboard/ and metrics.jsonl."""

from __future__ import annotations

import contextlib

import click
from unsamflow.pipeline.errors import BadInputError


@click.command("train", context_settings={"ignore_unknown_options": False})
@click.option("--preset", help="Preset name (python -m unsamflow.trainer presets) or a YAML config file.")
@click.argument("overrides", nargs=-1)
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: config.yaml, checkpoints/, tensorboard/, metrics.jsonl.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its latest checkpoint (config taken from it); "
                   "optim.iterations=N extends it (logged), logging.* may change.")
def train(preset, overrides, run_dir, resume) -> None:
    """Train with a preset and key=value overrides, e.g. optim.iterations=1000 data.roots=/data.

    \b
    Examples:
      python -m unsamflow.trainer train --preset cpu-demo data.roots=demo/data \
          data.masks=demo/masks/stores --out runs/demo
      python -m unsamflow.trainer train --out runs/demo --resume
      python -m unsamflow.trainer train --out runs/demo --resume optim.iterations=400   # extend
      python -m unsamflow.trainer train --preset kitti-aug-hg-mf model.init_from=runs/demo ... --out runs/ft
      torchrun --nproc-per-node 4 -m unsamflow.trainer train --preset kitti-aug-hg-mf ... --out runs/k
    optim.batch_size is the global batch: each of the N processes takes batch_size / N.
    SIGTERM or SIGUSR1 (a scheduler's warning) writes a checkpoint after the current step and exits with
    status 75 (requeue and --resume; scripts/train_slurm.sh does).
    model.init_from=CHECKPOINT starts a new run from those weights only (strict; model.init_strict=false
    loads the matching ones).
    """
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine import distributed
    from unsamflow.trainer.engine.run import prepare, run_lock
    from unsamflow.trainer.engine.run import train as run_training

    if preset is None and not resume:
        raise BadInputError("--preset NAME is needed for a new run (`python -m unsamflow.trainer presets` "
                            "lists them)")
    if overrides and preset is None and not resume:
        raise BadInputError(f"overrides {' '.join(overrides)} need --preset")
    from unsamflow.trainer.engine.preemption import EXIT_PREEMPTED, Preempted

    cfg = load_config(preset, overrides) if preset is not None else None
    resume_overrides = overrides if preset is None else ()
    lock = contextlib.ExitStack()
    lock.enter_context(run_lock(run_dir))  # one training per run folder, held to the end
    try:
        summary = run_training(prepare(cfg, run_dir, resume=resume, resume_overrides=resume_overrides))
    except Preempted as stop:
        if distributed.current().is_main:
            click.echo(f"train: {stop}", err=True)
        raise SystemExit(EXIT_PREEMPTED) from None
    finally:
        distributed.cleanup()
        lock.close()
    if summary["rank"] != 0:
        return
    losses = " ".join(f"{k}={v:.4g}" for k, v in (summary["losses"] or {}).items())
    ev = summary["eval"] or {}
    metrics = " ".join(f"{k}={ev[k]:.4g}" for k in ("epe", "epe_non_occ", "flall") if k in ev)
    resumed = f" (resumed at {summary['resumed_from']})" if summary["resumed_from"] is not None else ""
    click.echo(f"trained {summary['iterations']} iterations{resumed} in {summary['seconds']:.1f} s, "
               f"stage {summary['stage']}; {losses}{'; eval ' + metrics if metrics else ''}; "
               f"checkpoint {summary['checkpoint']}")
