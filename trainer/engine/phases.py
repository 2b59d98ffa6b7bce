"""Data phases: a run that trains on one mix, then on another (the reference recipes' raw frames first,
then the benchmark sets), one BatchStream per phase.

The phase in force follows the trainer's iteration (starts are fractions of optim.iterations, so they
scale with the run as stage starts do). Each phase keeps its own epoch and position, and a checkpoint
records all of them, so a resumed run continues every phase exactly where it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from unsamflow.trainer.engine.loop import BatchStream


def phase_starts(starts: Sequence[float], iterations: int) -> list[int]:
    """The first iteration (0-based) of each phase."""
    return [round(s * iterations) for s in starts]


class PhasedStream:
    """`next()` gives a batch of the phase in force at `iteration()`; `on_switch(index)` when it changes."""

    def __init__(self, streams: list[BatchStream], starts: list[int], iteration: Callable[[], int],
                 on_switch: Callable[[int], None] | None = None):  # fmt: skip
        self.streams, self.starts = streams, starts
        self.iteration = iteration
        self.on_switch = on_switch
        self.phase: int | None = None
        self.floor = 0  # a resumed run whose schedule was extended never goes back to an earlier phase

    def phase_at(self, iteration: int) -> int:
        reached = max(i for i, start in enumerate(self.starts) if iteration >= start or i == 0)
        return max(reached, self.floor)

    def next(self) -> dict[str, Any]:
        k = self.phase_at(self.iteration())
        if k != self.phase:
            if self.phase is not None and self.on_switch is not None:
                self.on_switch(k)
            self.phase = k
        return self.streams[k].next()

    def state_dict(self) -> dict[str, Any]:
        """The phase in force, its epoch and position (as a plain BatchStream's), and every phase's."""
        k = self.phase if self.phase is not None else self.phase_at(self.iteration())
        return {**self.streams[k].state_dict(), "phase": k, "phases": [s.state_dict() for s in self.streams]}
