"""`make bench`: run every benchmarks/bench_*.py (or those named on the command line).

The long studies run only when named, e.g. `python -m benchmarks.run_all bench_ablation`: the ablation
(~30 min of training on 2 cores, `make ablation`) and the cluster-scale simulation (~15 min,
`make scaling`).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

LONG = {"bench_ablation", "bench_scaling"}  # many minutes each: only when asked for by name


def main(argv: list[str]) -> None:
    here = Path(__file__).resolve().parent
    names = argv or sorted(p.stem for p in here.glob("bench_*.py") if p.stem not in LONG)
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"== {name} done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
