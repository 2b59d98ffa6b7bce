"""torch.distributed plumbing: one process per device under torchrun, a plain process otherwise.

`torchrun --nproc-per-node N -m unsamflow.trainer train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; the
backend is NCCL on CUDA and gloo on CPU. Without those variables (or with WORLD_SIZE=1) every helper
here is a no-op, so the same loop runs as one process in tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from unsamflow.trainer.metrics import FlowMetrics


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str, init_method: str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).
    init_method: e.g. "file:///tmp/x" instead of torchrun's MASTER_ADDR/PORT (tests)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    """The running process group's rank and size (rank 0 of 1 outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def _reduce_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_metrics(metrics: FlowMetrics) -> FlowMetrics:
    """Sum every rank's metric sums in place (a metric missing on a rank counts 0 there); returns it.

    FlowMetrics holds sums and counts, so the sum over ranks equals one process's evaluation of the
    whole dataset (up to float64 summation order).
    """
    if not current().enabled:
        return metrics
    keys: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(keys, sorted(metrics.sums))
    union = sorted(set().union(*keys))
    values = torch.tensor([metrics.sums.get(k, 0.0) for k in union], dtype=torch.float64,
                          device=_reduce_device())
    dist.all_reduce(values)
    metrics.sums = dict(zip(union, values.cpu().tolist(), strict=True))
    return metrics


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean over ranks of scalar figures (loss terms for logging); same keys on every rank."""
    if not current().enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).cpu().tolist(), strict=True))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (rank order), e.g. per-rank RNG states for a checkpoint."""
    if not current().enabled:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
