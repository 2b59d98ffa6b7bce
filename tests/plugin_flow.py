"""A plug-in flow as a user would write one ('plugin_flow:make_blocking'): DIS that stops at one call.

The `block_at`-th flow this process computes creates the file `reached` and waits until `release` exists,
so a test knows, without timing guesses, that a worker is inside a sequence (earlier ones finished).
"""

from __future__ import annotations

import time
from pathlib import Path

from unsamflow.pipeline.track import DISFlow

_CALLS = [0]  # per process: the count survives the flow objects (one per sequence task)


class BlockingFlow(DISFlow):
    def __init__(self, reached: str, release: str, block_at: int):
        super().__init__()
        self.reached, self.release, self.block_at = Path(reached), Path(release), block_at

    def __call__(self, new, old):
        _CALLS[0] += 1
        if _CALLS[0] == self.block_at and not self.release.exists():
            self.reached.touch()
            while not self.release.exists():
                time.sleep(0.05)
        return super().__call__(new, old)


def make_blocking(reached: str, release: str, block_at: int = 1) -> BlockingFlow:
    return BlockingFlow(reached, release, block_at)
