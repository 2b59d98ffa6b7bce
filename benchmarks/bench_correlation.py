"""Correlation (cost volume, r = 4): the GEMM layer against the 81-shift loop, forward + backward.

Shapes are the five decoder levels of PWC-Lite on 256 x 832 KITTI crops, batch 8 (1/4 .. 1/64, 32..192
channels). Times are medians of interleaved repeats; both implementations get the same inputs and the
same upstream gradient. Runs on CPU with 1 thread and with torch's default, and on CUDA when present.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from unsamflow.trainer.model.correlation import correlation, correlation_reference

from benchmarks.common import write_results

LEVELS = [(32, 64, 208), (64, 32, 104), (96, 16, 52), (128, 8, 26), (192, 4, 13)]  # (C, H, W) at 1/4..1/64
BATCH = 8
REPEATS = 5


def _fwd_bwd(fn, x1: torch.Tensor, x2: torch.Tensor, grad: torch.Tensor) -> tuple[float, torch.Tensor]:
    a, b = x1.detach().requires_grad_(), x2.detach().requires_grad_()
    sync = torch.cuda.synchronize if x1.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn(a, b)
    out.backward(grad)
    sync()
    return time.perf_counter() - t0, out.detach()


def _measure(device: str, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    g = torch.Generator().manual_seed(0)
    for c, h, w in LEVELS:
        x1, x2 = (torch.randn(BATCH, c, h, w, generator=g).to(device) for _ in range(2))
        grad = torch.randn(BATCH, 81, h, w, generator=g).to(device)
        times: dict[str, list[float]] = {"loop": [], "gemm": []}
        for rep in range(REPEATS + 1):  # first round warms up (allocator, kernels)
            t_loop, ref = _fwd_bwd(correlation_reference, x1, x2, grad)
            t_gemm, out = _fwd_bwd(correlation, x1, x2, grad)
            if rep:
                times["loop"].append(t_loop)
                times["gemm"].append(t_gemm)
        loop, gemm = statistics.median(times["loop"]), statistics.median(times["gemm"])
        rows.append(
            {
                "device": device,
                "threads": threads if device == "cpu" else "",
                "B,C,H,W": f"{BATCH},{c},{h},{w}",
                "loop_ms": 1e3 * loop,
                "gemm_ms": 1e3 * gemm,
                "speedup": loop / gemm,
                "max_abs_diff": float((out - ref).abs().max()),
            }
        )
        print(rows[-1], flush=True)
    loop, gemm = sum(r["loop_ms"] for r in rows), sum(r["gemm_ms"] for r in rows)
    total = {"device": device, "threads": rows[0]["threads"], "B,C,H,W": "all five levels"}
    rows.append({**total, "loop_ms": loop, "gemm_ms": gemm, "speedup": loop / gemm})
    return rows


def main() -> None:
    default_threads = torch.get_num_threads()
    rows = []
    for threads in sorted({1, default_threads}):
        rows += _measure("cpu", threads)
    torch.set_num_threads(default_threads)
    if torch.cuda.is_available():
        rows += _measure("cuda", default_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes = (
        "Forward + backward of the cost volume (search range 4, 81 channels), median of "
        f"{REPEATS} interleaved runs; `loop` is the 81-shift definition, `gemm` is "
        "trainer.model.correlation (strided batched GEMMs, tile 16). Shapes: the decoder levels of "
        f"PWC-Lite for 256x832 inputs. Load average at the end: {load:.1f} (shared machine: absolute "
        "times vary with load, the ratio less)."
    )
    write_results("correlation", rows, notes)


if __name__ == "__main__":
    main()
