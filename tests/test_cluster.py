"""Cluster choice: local workers pinned to their devices, SLURM job scripts, bad addresses."""

import os

import pytest
from unsamflow.pipeline.cluster import (
    GPU_WORKER_THREADS,
    MALLOC_ENV,
    ClusterConfig,
    local_worker_specs,
    open_cluster,
    slurm_cluster,
)
from unsamflow.pipeline.errors import BadInputError


def test_local_gpu_workers_are_pinned_one_per_device():
    # Real worker processes: each must see exactly its own device, as CUDA would enumerate it.
    cfg = ClusterConfig(gpus=[3, 5], dashboard=None)
    with open_cluster(cfg) as client:
        client.wait_for_workers(2)
        seen = client.run(lambda: (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["UNSAMFLOW_DEVICE"]))
        threads = client.nthreads()
    assert sorted(seen.values()) == [("3", "cuda:0"), ("5", "cuda:0")]
    # Two task threads per GPU: they take turns in the model (segment._CALL_LOCK), one prepares meanwhile.
    assert sorted(threads.values()) == [GPU_WORKER_THREADS, GPU_WORKER_THREADS] == [2, 2]


def _start_environment() -> list[bytes]:
    with open("/proc/self/environ", "rb") as f:
        return f.read().split(b"\0")


def test_local_cpu_workers_limit_math_threads_and_tune_malloc_before_start():
    cfg = ClusterConfig(workers=2, threads_per_worker=2, gpus=[], dashboard=None)
    specs = local_worker_specs(cfg)
    assert len(specs) == 2 and all(s["options"]["nthreads"] == 2 for s in specs.values())
    with open_cluster(cfg) as client:
        client.wait_for_workers(2)
        # glibc only honours these when they are in the environment at process start
        seen = client.run(_start_environment)
        limits = client.run(lambda dask_worker: dask_worker.memory_manager.memory_limit)
    for env in seen.values():
        assert b"OMP_NUM_THREADS=2" in env
        assert f"MALLOC_TRIM_THRESHOLD_={MALLOC_ENV['MALLOC_TRIM_THRESHOLD_']}".encode() in env
    # The workers' limits leave room for the client and the scheduler (Dask's default gave two
    # single-threaded workers on 2 cores all of the machine's memory, 11.8 GiB each of 23 GiB).
    import psutil

    total = psutil.virtual_memory().total
    assert len(limits) == 2 and sum(limits.values()) <= total - max(1 << 30, total // 5), limits


def test_unreachable_scheduler_is_a_clear_error():
    with pytest.raises(BadInputError, match="cannot reach Dask scheduler at tcp://127.0.0.1:1"), \
            open_cluster(ClusterConfig(scheduler="tcp://127.0.0.1:1", connect_timeout="1s")):
        pass


def test_slurm_job_script_carries_user_options():
    pytest.importorskip("dask_jobqueue")
    cluster, jobs = slurm_cluster({
        "jobs": 4, "queue": "gpu", "walltime": "02:00:00",
        "job_extra_directives": ["--gres=gpu:1"], "scheduler_options": {"dashboard_address": None},
    })
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 4
    assert "#SBATCH -p gpu" in script
    assert "#SBATCH -t 02:00:00" in script
    assert "#SBATCH --gres=gpu:1" in script


def test_bad_slurm_option_names_it():
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(BadInputError, match="bad SLURM option"):
        slurm_cluster({"no_such_option": 1})


def test_sam_device_auto_follows_the_device_the_cluster_gave_the_worker(monkeypatch):
    """UNSAMFLOW_DEVICE (set per worker above) decides "auto": a CPU worker stays on the CPU even
    where CUDA exists, so that N CPU workers never pile onto GPU 0."""
    import torch
    from unsamflow.pipeline.segmenters.sam import _resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("UNSAMFLOW_DEVICE", "cpu")
    assert _resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("UNSAMFLOW_DEVICE", "cuda:0")
    assert _resolve_device("auto") == torch.device("cuda:0")
    monkeypatch.delenv("UNSAMFLOW_DEVICE")
    assert _resolve_device("auto") == torch.device("cuda")


def test_visible_gpus_import_nothing_without_a_driver_and_pin_to_cuda_visible_devices(tmp_path):
    """No GPU driver: no torch import (~550 MB, a second of start). With one, torch's count decides (0 for
    a CPU-only build) and workers are pinned to the ids CUDA_VISIBLE_DEVICES names (a worker given "0"
    under CUDA_VISIBLE_DEVICES=2,3 would use GPU 0)."""
    import subprocess
    import sys

    from unsamflow.pipeline.cluster import visible_gpus

    none = (str(tmp_path / "absent"),)
    driver = tmp_path / "nvidiactl"
    driver.touch()
    three = lambda: 3  # noqa: E731
    assert visible_gpus({}, none, count=three) == []
    assert visible_gpus({}, (str(driver),), count=lambda: 0) == []  # driver, but no usable device
    assert visible_gpus({}, (str(driver),), count=three) == ["0", "1", "2"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,1"}, (str(driver),), count=lambda: 2) == ["2", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, (str(driver),), count=three) == ["1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, (str(driver),), count=three) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f1c"}, (str(driver),), count=three) == ["GPU-8f1c"]

    def broken():
        raise RuntimeError("CUDA driver version is insufficient")

    assert visible_gpus({}, (str(driver),), count=broken) == []
    code = ("import sys; from unsamflow.pipeline import cluster; "
            f"cluster.GPU_DRIVER_PATHS = {none!r}; "
            "cluster.local_worker_specs(cluster.ClusterConfig(workers=1)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
