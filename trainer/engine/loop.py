"""The training loop: one `run_step` for every preset, with hooks around it (detectron2's shape).

A step: appearance augmentation -> forward (both directions) -> stage-aware losses (objective.py: the
photometric loss against the un-jittered frames, the spatial and occlusion passes, homography
smoothness) -> backward -> gradient clip -> optimiser and OneCycle step -> push the batch's key objects
into the cache. Which terms run is decided by the config's stage list, by iteration; checkpointing,
logging and evaluation are hooks (hooks.py), so the loop itself holds no schedule of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from unsamflow.trainer.engine.objective import Objective, StepResult
from unsamflow.trainer.engine.timing import PhaseTimer


class HookBase:
    """Called around the loop; a hook reads the trainer's public attributes."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


class BatchStream:
    """Endless batches over epochs, with a position that a checkpoint records and a resume restores.

    `make_loader(epoch, skip)` returns the epoch's batches after the first `skip` ones; the data's
    randomness depends on (seed, epoch, index) only, so batch n of epoch e is the same whether the run
    stopped in between or not.
    """

    def __init__(self, make_loader: Callable[[int, int], Iterable[dict[str, Any]]], device: torch.device,
                 epoch: int = 0, position: int = 0):  # fmt: skip
        self.make_loader = make_loader
        self.device = device
        self.epoch, self.position = epoch, position
        self._it: Iterator[dict[str, Any]] | None = None

    def next(self) -> dict[str, Any]:
        while True:
            if self._it is None:
                self._it = iter(self.make_loader(self.epoch, self.position))
            batch = next(self._it, None)
            if batch is not None:
                self.position += 1
                return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                        for k, v in batch.items()}  # fmt: skip
            self._it, self.epoch, self.position = None, self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


class Trainer:
    """Owns the model, optimiser, scheduler and objective; `train()` runs steps until `max_iter`.

    `stage_at(iteration) -> (index, stage)` gives the switches in force; `iteration` counts finished
    steps (a checkpoint written after step n holds iteration n).
    """

    def __init__(
        self, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
        objective: Objective, data: BatchStream, stage_at: Callable[[int], tuple[int, Any]], max_iter: int,
        clip: float = 10.0, timer: PhaseTimer | None = None, hooks: Sequence[HookBase] = (),
        start_iteration: int = 0,
    ):  # fmt: skip
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.objective, self.data, self.stage_at = objective, data, stage_at
        self.max_iter, self.clip = max_iter, clip
        self.timer = timer or objective.timer
        self.hooks = list(hooks)
        self.iteration = start_iteration
        self.stage_index = stage_at(min(start_iteration, max_iter - 1))[0]
        self.batch: dict[str, Any] = {}
        self.result: StepResult | None = None
        self.step_times: dict[str, float] = {}
        self.grad_norm: float | None = None
        self.logger: Any = None  # the run's RunLogger, when hooks write one

    def train(self) -> None:
        for h in self.hooks:
            h.before_train(self)
        while self.iteration < self.max_iter:
            self.run_step()
            self.iteration += 1
            for h in self.hooks:
                h.after_step(self)
        for h in self.hooks:
            h.after_train(self)

    def run_step(self) -> None:
        """One optimisation step at `self.iteration` (0-based)."""
        t = self.timer
        with t.phase("data"):
            batch = self.data.next()
        self.stage_index, stage = self.stage_at(self.iteration)
        self.model.train()
        result = self.objective(self.model, batch, stage)
        with t.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(result.loss).backward()
        with t.phase("optimizer"):
            self.scaler.unscale_(self.optimizer)
            if self.clip > 0:
                self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.objective.push_key_objects(batch, result)
        self.batch, self.result, self.step_times = batch, result, t.pop()
