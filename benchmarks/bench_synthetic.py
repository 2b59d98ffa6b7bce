"""Synthetic scene speed: one pair (render + forward/backward flow), and writing it to disk."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
from unsamflow.pipeline.synthetic.dataset import write_sequence
from unsamflow.pipeline.synthetic.scenes import SceneConfig, config_for, make_scene

from benchmarks.common import write_results

SEEDS = range(5)
NOTES = (
    "Median over 5 seeds of one pair: 2 frames rendered, forward and backward flow and occlusion. "
    "'written' adds PNG/.flo encoding and atomic writes (instance maps too). cpu = process CPU time "
    "(robust on a shared machine), wall = elapsed time."
)


def _median_seconds(fn: Callable[[int], object]) -> tuple[float, float]:
    """Median (cpu, wall) seconds of fn(seed) over SEEDS."""
    cpu, wall = [], []
    for seed in SEEDS:
        c0, w0 = time.process_time(), time.perf_counter()
        fn(seed)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def _in_memory(config: SceneConfig) -> Callable[[int], object]:
    def run(seed: int) -> None:
        scene = make_scene(config, np.random.default_rng(seed))
        scene.flow(0, 1)
        scene.flow(1, 0)

    return run


def main() -> None:
    rows = []
    for difficulty in ("easy", "medium", "hard"):
        for h, w in ((256, 320), (436, 1024)):
            config = config_for(difficulty, h, w, 2)
            with tempfile.TemporaryDirectory() as tmp:
                written = _median_seconds(lambda seed, c=config, d=tmp: write_sequence(d, seed, c, 0))
            memory = _median_seconds(_in_memory(config))
            rows.append({"difficulty": difficulty, "size": f"{h}x{w}",
                         "in_memory_cpu_s": memory[0], "in_memory_wall_s": memory[1],
                         "written_cpu_s": written[0], "written_wall_s": written[1]})  # fmt: skip
    write_results("synthetic", rows, NOTES)


if __name__ == "__main__":
    main()
