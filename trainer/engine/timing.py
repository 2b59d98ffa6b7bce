"""Wall time per phase of a training step (data wait, forward, losses, augmentation, backward, ...).

CUDA runs asynchronously, so a phase's wall time only means something when the device is synchronised
at its end; that costs throughput, so the loop turns `sync` on only for the steps it logs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Accumulates seconds per named phase; `pop()` returns and clears them (one step's figures)."""

    def __init__(self, device: torch.device | str = "cpu", sync: bool = False):
        self.cuda = torch.device(device).type == "cuda"
        self.sync = sync
        self.times: dict[str, float] = defaultdict(float)

    def _synchronize(self) -> None:
        if self.sync and self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block; nested or repeated phases of the same name add up."""
        self._synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._synchronize()
            self.times[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.times[name] += seconds

    def pop(self) -> dict[str, float]:
        out = dict(self.times)
        self.times.clear()
        return out
