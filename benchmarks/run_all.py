"""`make bench`: run every benchmarks/bench_*.py (or those named on the command line).

The long studies run only when named, e.g. `python -m benchmarks.run_all bench_learning`: the learning
evidence and the +aug/+hg/+mf ablation (up to an hour of training on 2 cores, `make learning`) and the
cluster-scale simulation (~15 min, `make scaling`).
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

LONG = {"bench_learning", "bench_scaling"}  # many minutes each: only when asked for by name


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
