"""The DataLoader: reproducible per (seed, epoch, rank), distributed-aware, resumable mid-epoch.

The sampler yields `SampleKey(index, epoch, seed, rank)`, not bare indices: each sample draws its crop,
flips and swap from that key alone, so the same seed, epoch and rank give the same samples in the same
order whatever the worker count, start method or `persistent_workers` (a dataset copy living in a
persistent worker never needs to hear about a new epoch). Call `set_epoch(loader, epoch)` before
iterating each epoch; `set_epoch(loader, epoch, skip_batches=n)` resumes after the n-th batch.
"""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.data.pairs import SampleKey


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class KeySampler(Sampler):
    """An epoch's sample order as SampleKeys: this rank's share (DistributedSampler when torch.distributed
    is initialised), shuffled by (seed, epoch) or in order, optionally skipping the first `skip` samples."""

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        self.n = len(dataset)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.skip = 0
        self.rank = dist.get_rank() if _distributed() else 0
        self.inner = (DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
                      if _distributed() else None)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if epoch < 0 or skip < 0:
            raise BadInputError(f"epoch and skip must be >= 0, got {epoch} and {skip}")
        self.epoch, self.skip = epoch, skip
        if self.inner is not None:
            self.inner.set_epoch(epoch)

    def order(self) -> list[int]:
        if self.inner is not None:
            return list(self.inner)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        for i in self.order()[self.skip:]:
            yield SampleKey(i, self.epoch, self.seed, self.rank)

    def __len__(self) -> int:
        total = len(self.inner) if self.inner is not None else self.n
        return max(0, total - self.skip)


def worker_init(worker_id: int) -> None:
    """Per-worker seeds for any library randomness (the samples' own come from their keys).

    Thread pools are left alone: torch already gives each worker one thread, and resizing a pool the
    parent had started (torch.set_num_threads, cv2.setNumThreads) deadlocks in a forked worker (seen
    here with torch 2.14 and OpenCV 4).

    SIGTERM and SIGUSR1 are ignored here: a scheduler signals every process of a job, and the training
    process answers them with a checkpoint (engine/preemption.py), which needs its workers alive until
    then; it ends them itself (and they exit when it dies)."""
    seed = torch.initial_seed() % 2**32  # the DataLoader's base seed + worker id
    random.seed(seed)
    np.random.seed(seed)
    for name in ("SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def build_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 num_workers: int = 2, drop_last: bool = True, start_method: str | None = None,
                 pin_memory: bool | None = None, persistent_workers: bool = True,
                 prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over `dataset` with a KeySampler (see the module doc).

    start_method: "fork", "spawn", "forkserver" or None (the platform's default); stores open lazily
    in each worker either way. pin_memory: None = when CUDA is available.
    """
    if batch_size < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise BadInputError(f"num_workers must be >= 0, got {num_workers}")
    sampler = KeySampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = num_workers > 0
    generator = torch.Generator().manual_seed(seed * 1_000_003 + sampler.rank)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers,
        pin_memory=pin_memory, worker_init_fn=worker_init if workers else None, generator=generator,
        persistent_workers=persistent_workers and workers,
        multiprocessing_context=start_method if workers else None,
        prefetch_factor=prefetch_factor if workers else None,
    )


def set_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Select the epoch the next iteration over `loader` reads, resuming after `skip_batches` batches."""
    sampler = loader.sampler
    if not isinstance(sampler, KeySampler):
        raise BadInputError("set_epoch needs a loader made by build_loader")
    sampler.set_epoch(epoch, skip_batches * (loader.batch_size or 1))
