"""Preemption: SIGTERM (what SLURM and Kubernetes send before killing a job) or SIGUSR1 (SLURM's
`--signal=USR1@SECONDS` warning) ends training with a checkpoint of the last finished step, written
atomically, and the exit status EXIT_PREEMPTED, which scripts/train_slurm.sh reads as "requeue me".

The handler only sets a flag; the step in flight finishes, then `PreemptionHook` (after the checkpoint
hook) saves unless that iteration is saved already, and raises `Preempted`. Under torch.distributed
every rank learns of a signal any rank got (an all-reduce per step), so all ranks stop at the same
iteration and write one consistent checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unsamflow.trainer.engine.distributed import all_reduce_mean, current
from unsamflow.trainer.engine.loop import HookBase, Trainer

EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, try again"
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)


class Preempted(Exception):
    """Training stopped on a signal after writing `checkpoint` at `iteration`."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        name = signal.Signals(signum).name if signum else "a signal on another rank"
        super().__init__(f"stopped by {name} after iteration {iteration}; checkpoint {checkpoint}; "
                         "continue with `train --out RUN --resume`")  # fmt: skip


class StopFlag:
    """Set by the signal handler; read between steps."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: object) -> None:
        self.signum = signum


@contextmanager
def catch_stop_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route STOP_SIGNALS to `flag` while training (main thread only: elsewhere signals cannot be caught,
    and the defaults stay); the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class PreemptionHook(HookBase):
    """After each step: on a stop signal, save (via the checkpoint hook) and raise Preempted."""

    def __init__(self, flag: StopFlag, checkpoints: HookBase):
        self.flag, self.checkpoints = flag, checkpoints

    def after_step(self, trainer: Trainer) -> None:
        stop = self.flag.signum != 0
        if current().enabled:  # every rank stops together
            stop = all_reduce_mean({"stop": float(stop)})["stop"] > 0
        if not stop:
            return
        hook = self.checkpoints
        if getattr(hook, "last_saved", None) != trainer.iteration:
            hook.save(trainer)  # type: ignore[attr-defined]
        written = getattr(hook, "written", [])
        raise Preempted(self.flag.signum, trainer.iteration, written[-1] if written else None)
