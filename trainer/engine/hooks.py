"""Hooks around the loop: periodic checkpoints, logging (scalars, pictures, bar) and evaluation.

Every hook runs on every rank, because checkpoints gather per-rank RNG states and logging averages
the loss terms over ranks (collectives); only rank 0 writes files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from unsamflow.pipeline.atomic import replace_atomic, temp_path
from unsamflow.trainer.engine.checkpoint import checkpoint_name, save_checkpoint
from unsamflow.trainer.engine.distributed import all_reduce_mean, barrier, current
from unsamflow.trainer.engine.logging import RunLogger, step_pictures
from unsamflow.trainer.engine.loop import HookBase, Trainer

LATEST = "latest.pt"
COLLAPSE_OCCLUDED = 0.9  # occluded share of the pixels above which the run is warned of a collapse


def link_latest(path: Path) -> Path:
    """Point checkpoints/latest.pt at `path` atomically (a hard link; a copy where links fail), with
    `path`'s checksum beside it (the old one removed first, so it never describes another file)."""
    from unsamflow.trainer.engine.checkpoint import checksum_path, read_checksum, write_checksum

    latest = path.with_name(LATEST)
    tmp = temp_path(latest)
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(path, tmp)
    sha = read_checksum(path)
    checksum_path(latest).unlink(missing_ok=True)
    replace_atomic(tmp, latest)
    if sha is not None:
        write_checksum(latest, sha)
    return latest


class CheckpointHook(HookBase):
    """Writes checkpoints/ckpt_XXXXXXX.pt (+ latest.pt) every `every` iterations and at the end."""

    def __init__(self, folder: Path, every: int, state_fn: Callable[[Trainer], dict[str, Any]]):
        self.folder, self.every, self.state_fn = Path(folder), every, state_fn
        self.last_saved: int | None = None
        self.written: list[Path] = []

    def before_train(self, trainer: Trainer) -> None:
        self.last_saved = trainer.iteration if trainer.iteration else None  # resumed: that file exists

    def save(self, trainer: Trainer) -> None:
        state = self.state_fn(trainer)  # collective: every rank contributes its RNG state
        if current().is_main:
            path = save_checkpoint(self.folder / checkpoint_name(trainer.iteration), state)
            link_latest(path)
            self.written.append(path)
        self.last_saved = trainer.iteration
        barrier()

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.iteration % self.every == 0:
            self.save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.last_saved != trainer.iteration:
            self.save(trainer)


class LoggingHook(HookBase):
    """Scalars every `every` steps (loss terms averaged over ranks, lr, stage, seconds per phase of
    that step), pictures every `image_every`, and the progress bar every step."""

    def __init__(self, logger: RunLogger, every: int, image_every: int = 0):
        self.logger, self.every, self.image_every = logger, every, image_every
        self.last: dict[str, float] = {}
        self.warned = False

    def before_train(self, trainer: Trainer) -> None:
        trainer.timer.sync = (trainer.iteration + 1) % self.every == 0

    def after_step(self, trainer: Trainer) -> None:
        it, result = trainer.iteration, trainer.result
        # time the next logged step exactly (a CUDA sync per phase costs throughput; only then)
        trainer.timer.sync = (it + 1) % self.every == 0
        if it % self.every == 0 or it == trainer.max_iter:
            terms = {k: float(v.detach()) for k, v in result.terms.items()}
            terms["total"] = float(result.loss.detach())
            terms = all_reduce_mean(terms)
            # The share of frame-1 pixels the photometric loss leaves out as occluded. Near 1 the loss has
            # nothing left to train on: forward-backward occlusion on flows that are not yet consistent
            # (a stage switched on too early for the run's length) marks everything occluded, the loss
            # and its gradient go to 0 and the run collapses. Said once, loudly.
            occluded = all_reduce_mean({"occ": float(result.occ1.float().mean())})["occ"]
            self.logger.scalars(it, {"occluded_fraction": occluded})
            if occluded > COLLAPSE_OCCLUDED and not self.warned:
                self.warned = True
                print(f"warning: at iteration {it} (stage {trainer.stage_index}) {occluded:.0%} of the "
                      "pixels are marked occluded: the photometric loss has almost nothing to train on. With "
                      "forward-backward occlusion this means the flows are not yet consistent (the stage "
                      "started too early for this run's length): start it later or keep loss.occlusion=range",
                      file=sys.stderr, flush=True)
            self.last = {**terms, "occluded": occluded}
            self.logger.scalars(it, terms, "loss/")
            self.logger.scalars(it, {f"time/{k}": v for k, v in trainer.step_times.items()})
            lr = trainer.optimizer.param_groups[0]["lr"]
            self.logger.scalars(it, {"lr": lr, "stage": trainer.stage_index})
            if trainer.grad_norm is not None:
                self.logger.scalars(it, {"grad_norm": float(trainer.grad_norm)})
        self.logger.step(it, self.last, trainer.stage_index)
        if self.image_every and it % self.image_every == 0 and self.logger.enabled:
            b, flow = trainer.batch, result.pseudo
            self.logger.images(it, step_pictures(b["img1"], b["img2"], b["full_seg1"], flow, result.occ1,
                                                 result.pasted))


class EvalHook(HookBase):
    """Evaluates every `every` iterations and at the end; one metrics.jsonl line each time."""

    def __init__(self, logger: RunLogger, every: int,
                 evaluate_fn: Callable[[torch.nn.Module], dict[str, Any]]):  # fmt: skip
        self.logger, self.every, self.evaluate_fn = logger, every, evaluate_fn
        self.last_done: int | None = None
        self.results: dict[str, Any] = {}

    def before_train(self, trainer: Trainer) -> None:
        # resumed at a checkpoint: its evaluation (if one was due) ran before it was written
        self.last_done = trainer.iteration if trainer.iteration else None

    def run(self, trainer: Trainer) -> None:
        self.results = self.evaluate_fn(trainer.model)
        self.logger.metrics(trainer.iteration, self.results)
        self.last_done = trainer.iteration

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.iteration % self.every == 0:
            self.run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.last_done != trainer.iteration:
            self.run(trainer)
