"""Where the work runs: a local cluster we start, an existing scheduler, or SLURM via dask-jobqueue.

The local cluster is a SpecCluster of Nanny processes so that each worker can get its own
environment: with GPUs, one worker per device pinned by CUDA_VISIBLE_DEVICES (the same thing
dask-cuda does, without requiring it); on CPU, N single-threaded workers whose math libraries are
limited to their share of the cores so that N workers do not oversubscribe the machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline.errors import BadInputError


@dataclass
class ClusterConfig:
    """How to get a cluster. Exactly one of scheduler / slurm, or neither for a local cluster."""

    scheduler: str | None = None  # address of a running scheduler, e.g. tcp://10.0.0.5:8786
    workers: int | None = None  # local: number of workers (default: GPUs, else min(cores, 4))
    threads_per_worker: int = 1
    dashboard: str | None = ":0"  # local dashboard address (None: no dashboard)
    gpus: list[int] | None = None  # local: device ids to use (default: all visible)
    slurm: dict = field(default_factory=dict)  # SLURMCluster options + "jobs"; empty: not SLURM
    connect_timeout: str = "30s"  # how long to wait for --scheduler to answer


# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap
# threshold: every frame-sized array is then mmap'd, page-faulted and unmapped again. Measured on the
# graph segmenter: 50% slower than glibc's defaults; these values are 8% faster than the defaults.
# glibc reads them at process start, so they go into Dask's *pre-spawn* environment.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def visible_gpus() -> list[int]:
    """Ids of the CUDA devices this process may use (empty without CUDA)."""
    try:
        import torch

        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    except Exception:  # a broken CUDA install must not stop a CPU run
        return []


def local_worker_specs(cfg: ClusterConfig) -> dict[str, dict]:
    """Nanny specs for the local cluster: one per GPU (pinned), else N CPU workers."""
    from distributed import Nanny

    gpus = cfg.gpus if cfg.gpus is not None else visible_gpus()
    specs: dict[str, dict] = {}
    if gpus:
        if cfg.workers:
            gpus = gpus[: cfg.workers]
        for dev in gpus:
            # CUDA reads CUDA_VISIBLE_DEVICES at its first use, so the per-worker env is early enough.
            env = {"CUDA_VISIBLE_DEVICES": str(dev), "UNSAMFLOW_DEVICE": "cuda:0"}
            specs[f"gpu{dev}"] = {
                "cls": Nanny,
                "options": {"nthreads": 1, "env": env, "resources": {"GPU": 1}, "name": f"gpu{dev}",
                            "silence_logs": logging.WARNING},
            }
        return specs
    n = cfg.workers or max(1, min(os.cpu_count() or 1, 4))
    threads = str(max(1, cfg.threads_per_worker))
    env = {"UNSAMFLOW_DEVICE": "cpu", "UNSAMFLOW_TORCH_THREADS": threads}
    for i in range(n):
        specs[f"cpu{i}"] = {
            "cls": Nanny,
            "options": {"nthreads": cfg.threads_per_worker, "env": env, "name": f"cpu{i}",
                        "silence_logs": logging.WARNING},
        }
    return specs


def pre_spawn_environ(cfg: ClusterConfig) -> dict[str, str]:
    """Variables that must exist before a worker process starts (allocator, math-library threads)."""
    import dask

    threads = str(max(1, cfg.threads_per_worker))
    return {
        **{k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()},
        **MALLOC_ENV,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }


def slurm_cluster(options: dict):
    """A dask-jobqueue SLURMCluster (not yet scaled) and the number of jobs to ask for.

    options are SLURMCluster's own (queue, account, walltime, job_extra_directives, ...) plus
    "jobs"; cores/processes default to one single-process worker per job (one GPU per job).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise BadInputError(
            "SLURM needs dask-jobqueue: pip install 'unsamflow[slurm]'"
        ) from None
    opts = dict(options)
    jobs = int(opts.pop("jobs", 1))
    opts.setdefault("cores", 1)
    opts.setdefault("processes", 1)
    opts.setdefault("memory", "16GB")
    try:
        cluster = SLURMCluster(**opts)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"bad SLURM option: {str(exc).splitlines()[0]}") from None
    return cluster, jobs


@contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def open_cluster(cfg: ClusterConfig) -> Iterator:
    """Yield a connected distributed.Client; closes what it started (never a user's scheduler)."""
    import dask
    from distributed import Client, Scheduler, SpecCluster

    if cfg.scheduler and cfg.slurm:
        raise BadInputError("give either --scheduler or SLURM options, not both")
    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout=cfg.connect_timeout)
        except OSError as exc:
            raise BadInputError(f"cannot reach Dask scheduler at {cfg.scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # Dask takes each pre-spawn variable from os.environ when set there (an earlier cluster in this
    # process leaves its values behind), else from its config: set both, for the cluster's whole life.
    pre = pre_spawn_environ(cfg)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre}), _environ(pre):
        if cfg.slurm:
            cluster, jobs = slurm_cluster(cfg.slurm)
            cluster.scale(jobs=jobs)
        else:
            scheduler = {
                "cls": Scheduler,
                "options": {
                    "dashboard_address": cfg.dashboard or ":0",
                    "dashboard": cfg.dashboard is not None,
                },
            }
            cluster = SpecCluster(
                workers=local_worker_specs(cfg), scheduler=scheduler, silence_logs=logging.WARNING
            )
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
