"""Where the work runs: a local cluster we start, an existing scheduler, or SLURM via dask-jobqueue.

The local cluster is a SpecCluster of Nanny processes so that each worker can get its own
environment: with GPUs, one worker per device pinned by CUDA_VISIBLE_DEVICES (the same thing
dask-cuda does, without requiring it); on CPU, N single-threaded workers whose math libraries are
limited to their share of the cores so that N workers do not oversubscribe the machine.

Network exposure. A Dask scheduler runs whatever code a connected client sends it, and Dask has no
authentication besides TLS client certificates: anyone who can reach a scheduler or worker port can
run code as the user. So the local cluster binds everything it opens (scheduler, nannies, workers,
the dashboard and the HTTP endpoints Dask serves even without a dashboard) to 127.0.0.1 - Dask's own
default is every interface. Loopback keeps the network out, not other users of the same machine.
Work across machines goes through an explicit --scheduler or SLURM; with --tls-ca/--tls-cert/
--tls-key (or Dask's config, `distributed.comm.tls.*`), connections use mutual TLS.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from unsamflow.pipeline.errors import BadInputError

LOOPBACK = "127.0.0.1"
WORKER_PRELOAD = "unsamflow.pipeline.worker_init"  # workers ignore Ctrl-C; the client stops them
TLS_OPTIONS = {"tls_ca": "--tls-ca", "tls_cert": "--tls-cert", "tls_key": "--tls-key"}


@dataclass
class ClusterConfig:
    """How to get a cluster. Exactly one of scheduler / slurm, or neither for a local cluster."""

    scheduler: str | None = None  # address of a running scheduler, e.g. tls://10.0.0.5:8786
    workers: int | None = None  # local: number of workers (default: GPUs, else min(cores, 4))
    threads_per_worker: int = 1
    dashboard: str | None = LOOPBACK + ":0"  # local dashboard address (None: no dashboard)
    gpus: list[int | str] | None = None  # local: device ids to use (default: all visible)
    slurm: dict = field(default_factory=dict)  # SLURMCluster options + "jobs"; empty: not SLURM
    connect_timeout: str = "30s"  # how long to wait for --scheduler to answer
    # How long the client waits while no worker is alive (at start, or after every worker died) before
    # it gives up with an error. SLURM jobs wait in the queue: give them more.
    worker_timeout: float = 300.0
    # Bytes one frame may take on a worker (its masks as crops, label maps); a frame that needs more is
    # recorded bad with the numbers instead of killing its worker. None: half the worker's memory limit.
    frame_memory: int | None = None
    # Mutual TLS: all three PEM files or none. None: Dask's config (distributed.comm.tls.*) decides.
    tls_ca: str | None = None  # CA that signed the peers' certificates
    tls_cert: str | None = None  # this side's certificate, signed by tls_ca
    tls_key: str | None = None  # this side's private key


# Task threads of a local GPU worker. Tasks take turns in the one model (segment._CALL_LOCK), so the
# GPU runs one frame at a time; the second thread reads, derives and writes meanwhile, so the GPU does
# not idle between shards (benchmarks/bench_scaling, 1 worker, 8 shards of real frames at 0.5 s per
# frame: 2.7-4.4 % over the segmenter's time with 1 thread, 0.9-1.3 % with 2).
GPU_WORKER_THREADS = 2

# Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's adaptive mmap
# threshold: every frame-sized array is then mmap'd, page-faulted and unmapped again. Measured on the
# graph segmenter: 50% slower than glibc's defaults; these values are 8% faster than the defaults.
# glibc reads them at process start, so they go into Dask's *pre-spawn* environment.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def check_tls(cfg: ClusterConfig) -> None:
    """Refuse unusable TLS settings before any work starts, naming the option at fault.

    All three files or none: Dask's TLS is mutual (the scheduler asks for a client certificate), so
    a CA alone or a certificate alone cannot connect. A tcp:// scheduler with TLS files is refused
    rather than silently sent in clear text, which is what the user meant to avoid. The files are
    loaded here too, so a key that does not belong to its certificate fails now, not in a worker.
    """
    given = {key: getattr(cfg, key) for key in TLS_OPTIONS if getattr(cfg, key)}
    if not given:
        return
    if len(given) < len(TLS_OPTIONS):
        missing = [flag for key, flag in TLS_OPTIONS.items() if key not in given]
        have = [TLS_OPTIONS[key] for key in given]
        raise BadInputError(
            f"{', '.join(have)} also need{'s' if len(have) == 1 else ''} {' and '.join(missing)}: "
            "Dask's TLS is mutual, give all of --tls-ca, --tls-cert and --tls-key"
        )
    for key, value in given.items():
        path = Path(value)
        if not path.is_file():
            raise BadInputError(f"{TLS_OPTIONS[key]}: file not found: {path}")
    if cfg.scheduler and not cfg.scheduler.startswith("tls://"):
        raise BadInputError(
            f"--scheduler {cfg.scheduler}: TLS options need a tls:// address (e.g. tls://head-node:8786) "
            "of a scheduler started with `dask scheduler --protocol tls --tls-ca-file ... --tls-cert ... "
            "--tls-key ...`"
        )
    try:  # Security loads the files lazily; building the client's SSL context loads them all
        _mutual_tls(cfg).get_connection_args("client")
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise BadInputError(
            f"--tls-ca {cfg.tls_ca}, --tls-cert {cfg.tls_cert}, --tls-key {cfg.tls_key}: "
            f"unusable TLS files: {exc}"
        ) from None


def check_scheduler_address(address: str | None) -> None:
    """Refuse a --scheduler value that is not an address (no protocol or port), before any stage runs."""
    if address is None:
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        protocol, location = parse_address(address, strict=False)
        host, _port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise BadInputError(
            f"--scheduler {address!r} is not a Dask scheduler address ({exc}); give PROTOCOL://HOST:PORT, "
            "e.g. tcp://head-node:8786 or tls://head-node:8786"
        ) from None
    if protocol not in ("tcp", "tls", "ucx", "ws", "wss") or not host:
        raise BadInputError(
            f"--scheduler {address!r}: unknown protocol {protocol!r} or no host; give tcp://HOST:PORT or "
            "tls://HOST:PORT"
        )


def _mutual_tls(cfg: ClusterConfig):
    from distributed.security import Security

    ca, cert, key = (str(Path(p).resolve()) for p in (cfg.tls_ca, cfg.tls_cert, cfg.tls_key))
    return Security(
        tls_ca_file=ca,
        tls_client_cert=cert, tls_client_key=key,
        tls_scheduler_cert=cert, tls_scheduler_key=key,
        tls_worker_cert=cert, tls_worker_key=key,
        require_encryption=True,
    )


def cluster_security(cfg: ClusterConfig):
    """The distributed.security.Security for every connection we make or accept.

    With --tls-* files: mutual TLS with those files for every role (client, scheduler, worker: one
    certificate serves a process in both directions), and require_encryption, so that nothing falls
    back to clear text. Without them: Security(), which reads Dask's config (distributed.comm.tls.*
    and distributed.comm.require-encryption), so a site that configures TLS there needs no options.
    """
    from distributed.security import Security

    check_tls(cfg)
    return _mutual_tls(cfg) if cfg.tls_ca else Security()


def loopback_address(address: str | None) -> str | None:
    """A dashboard address with no host (":0", "8787") bound to loopback instead of every interface."""
    if address is None:
        return None
    host, sep, port = str(address).rpartition(":")
    if not sep:
        return f"{LOOPBACK}:{address}"
    return address if host else f"{LOOPBACK}:{port}"


# Where a GPU driver shows itself without importing anything: NVIDIA's /proc entries and device nodes,
# WSL2's GPU paravirtualisation device, ROCm's kernel driver.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia/gpus", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def visible_gpus(environ: dict[str, str] | None = None, drivers: tuple[str, ...] | None = None,
                 count=None) -> list[str]:
    """The GPUs this process may use, as values for a worker's CUDA_VISIBLE_DEVICES.

    On a machine with no GPU driver this imports nothing: importing torch in the client took ~550 MB and
    a second of start-up (bench_scaling's machinery rows) to learn that there is no GPU. Where a
    driver is present torch counts the devices it can use (none with a CPU-only build), and workers are
    pinned to the ids CUDA_VISIBLE_DEVICES names when it is set (not to 0..n-1, which are other GPUs).
    `count`: the device counter (default: torch's), for tests.
    """
    env = os.environ if environ is None else environ
    if not any(Path(p).exists() for p in (GPU_DRIVER_PATHS if drivers is None else drivers)):
        return []
    try:
        n = _torch_device_count() if count is None else count()
    except Exception:  # a broken CUDA install must not stop a CPU run
        return []
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return [str(i) for i in range(n)]
    ids = []
    for dev in (d.strip() for d in given.split(",")):
        if not dev or dev.startswith("-"):  # CUDA stops at the first invalid entry
            break
        ids.append(dev)
    return ids[:n]


def _torch_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# Memory kept outside the local workers' limits: the client (manifest, progress, its own numpy), the
# scheduler and the system. Dask's default ("auto") gives each worker total x its share of the cores, so
# two single-threaded workers on a 2-core, 23 GiB machine got 11.8 GiB each: all of it, nothing left
# for the client, and a frame's budget (half a worker's limit) was sized on memory that was not there.
RESERVED_SHARE = 0.2
RESERVED_MIN = 1 << 30


def worker_memory_limit(workers: int, total: int | None = None) -> int:
    """Bytes each of `workers` local workers may use: the machine's memory less the reserve, shared."""
    if total is None:
        import psutil

        total = psutil.virtual_memory().total
    reserve = max(RESERVED_MIN, int(total * RESERVED_SHARE))
    return max(1 << 28, (total - reserve) // max(1, workers))


def local_worker_specs(cfg: ClusterConfig, security=None) -> dict[str, dict]:
    """Nanny specs for the local cluster: one per GPU (pinned), else N CPU workers.

    Every nanny and its worker listen on loopback only (see the module docstring); with TLS, both
    speak tls:// with the given Security. Their memory limits together leave RESERVED_SHARE of the
    machine to the client and the scheduler (worker_memory_limit).
    """
    from distributed import Nanny

    net = network_options(cfg, security)
    gpus = cfg.gpus if cfg.gpus is not None else visible_gpus()
    specs: dict[str, dict] = {}
    if gpus:
        if cfg.workers:
            gpus = gpus[: cfg.workers]
        limit = worker_memory_limit(len(gpus))
        for dev in gpus:
            # CUDA reads CUDA_VISIBLE_DEVICES at its first use, so the per-worker env is early enough.
            env = {"CUDA_VISIBLE_DEVICES": str(dev), "UNSAMFLOW_DEVICE": "cuda:0"}
            specs[f"gpu{dev}"] = {
                "cls": Nanny,
                "options": {"nthreads": GPU_WORKER_THREADS, "env": env, "resources": {"GPU": 1},
                            "name": f"gpu{dev}", "memory_limit": limit,
                            "preload": [WORKER_PRELOAD],
                            "silence_logs": logging.WARNING, **net},
            }
        return specs
    n = cfg.workers or max(1, min(os.cpu_count() or 1, 4))
    threads = str(max(1, cfg.threads_per_worker))
    env = {"UNSAMFLOW_DEVICE": "cpu", "UNSAMFLOW_TORCH_THREADS": threads}
    limit = worker_memory_limit(n)
    for i in range(n):
        specs[f"cpu{i}"] = {
            "cls": Nanny,
            "options": {"nthreads": cfg.threads_per_worker, "env": env, "name": f"cpu{i}",
                        "memory_limit": limit,
                        "preload": [WORKER_PRELOAD],
                        "silence_logs": logging.WARNING, **net},
        }
    return specs


def network_options(cfg: ClusterConfig, security=None) -> dict:
    """Where a local scheduler or nanny listens: loopback, over TLS when the Security asks for it.

    A nanny passes host and protocol on to its worker, so this binds the worker too.
    """
    tls = security is not None and bool(security.require_encryption or cfg.tls_ca)
    out = {"host": LOOPBACK, "protocol": "tls://" if tls else "tcp://"}
    if security is not None:
        out["security"] = security
    return out


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


def slurm_cluster(options: dict, security=None, failures: list[str] | None = None):
    """A dask-jobqueue SLURMCluster (not yet scaled) and the number of jobs to ask for.

    options are SLURMCluster's own (queue, account, walltime, job_extra_directives, ...) plus
    "jobs"; cores/processes default to one single-process worker per job (one GPU per job), the
    dashboard to 127.0.0.1:8787 (reach it through an SSH tunnel). `failures` collects sbatch's
    messages of failed submissions (see _recording_job).
    Its scheduler must be reachable from the compute nodes, so it is not on loopback: give
    --tls-* (security) to make that network traffic mutual TLS; jobqueue then starts the scheduler
    and the job scripts' workers on tls:// with those files.
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
    if "dashboard_address" not in opts:  # Dask's default is every interface (0.0.0.0:8787)
        scheduler_options = dict(opts.get("scheduler_options") or {})
        scheduler_options.setdefault("dashboard_address", f"{LOOPBACK}:8787")
        opts["scheduler_options"] = scheduler_options
    if security is not None:
        opts.setdefault("security", security)  # jobqueue then defaults the protocol to tls://
    if failures is not None:
        opts.setdefault("job_cls", _recording_job(failures))
    try:
        cluster = SLURMCluster(**opts)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"bad SLURM option: {str(exc).splitlines()[0]}") from None
    return cluster, jobs


def _recording_job(failures: list[str]):
    """SLURMJob that records why `sbatch` failed (its own stderr) in `failures`, so that the client ends
    the run at the first failed submission instead of waiting --worker-timeout for workers that will
    never come while jobqueue logs a traceback per try."""
    from dask_jobqueue.slurm import SLURMJob
    from distributed.core import Status

    class RecordingSLURMJob(SLURMJob):
        async def start(self):
            try:
                await super().start()
            except Exception as exc:  # recorded, not raised: jobqueue would log it and try again
                failures.append(sbatch_message(exc))
                # SpecCluster asserts a started job is "running"; this one has no job id, so closing it
                # cancels nothing, and the client ends the run at once (wait_for_slurm).
                self.status = Status.running

    return RecordingSLURMJob


def sbatch_message(exc: BaseException) -> str:
    """sbatch's own words from jobqueue's "Command exited with non-zero exit code ... stderr: ..." error."""
    text = str(exc)
    _, sep, err = text.partition("stderr:")
    lines = [x.strip() for x in (err if sep else text).splitlines() if x.strip()]
    return " ".join(lines) or type(exc).__name__


NO_TLS_WARNING = (
    "WARNING: the SLURM cluster runs without TLS: its scheduler listens on every interface of this host "
    "and runs any code a client that reaches its port sends, as you. Use --tls-auto (a throw-away CA and "
    "certificates in the output folder) or --tls-ca/--tls-cert/--tls-key.")


SLURM_COMMANDS = ("sbatch", "squeue", "scancel")


def check_slurm_commands() -> None:
    """Refuse SLURM without dask-jobqueue or the SLURM commands: without sbatch, jobqueue logged a
    traceback per job it failed to submit and then waited forever for workers that never came."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("dask_jobqueue") is None:
        raise BadInputError("SLURM needs dask-jobqueue: pip install 'unsamflow[slurm]'")
    missing = [cmd for cmd in SLURM_COMMANDS if shutil.which(cmd) is None]
    if missing:
        raise BadInputError(
            f"--slurm-jobs: {', '.join(missing)} not found on PATH; run on a SLURM login node (or put the "
            "SLURM client commands on PATH), or drop --slurm-jobs for a local cluster"
        )


def wait_for_workers(client, timeout: float, what: str = "the cluster") -> None:
    """Wait at most `timeout` s for a first worker; PipelineError saying so (never an endless wait)."""
    from unsamflow.pipeline.errors import PipelineError

    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise PipelineError(
            f"no Dask worker joined {what} within {timeout:.0f} s (--worker-timeout); check that workers "
            "can start and reach the scheduler (for SLURM: squeue, and the job logs)"
        ) from None


def wait_for_slurm(client, timeout: float, failures: list[str], poll: float = 0.2) -> None:
    """Wait at most `timeout` s for a first SLURM worker; a failed sbatch ends the wait at once with
    sbatch's own message (PipelineError)."""
    import time

    from unsamflow.pipeline.errors import PipelineError

    deadline = time.monotonic() + timeout
    while True:
        if failures:
            raise PipelineError(f"sbatch failed, so no SLURM job can start: {failures[0]}")
        try:
            client.wait_for_workers(1, timeout=poll)
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise PipelineError(
                    f"no Dask worker joined the SLURM cluster within {timeout:.0f} s (--worker-timeout); "
                    "check squeue and the job logs") from None


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


def _check_tls_settings(address: str, security) -> None:
    if address.startswith("tls://") and not security.get_connection_args("client").get("ssl_context"):
        raise BadInputError(
            f"--scheduler {address} speaks TLS, but no TLS files are set: give --tls-ca, --tls-cert "
            "and --tls-key (or set distributed.comm.tls.ca-file / .client.cert / .client.key in "
            "the Dask config)"
        )


def connect(cfg: ClusterConfig, security):
    """A Client for the scheduler at cfg.scheduler, or a BadInputError that says what to fix.

    Measured against a `dask scheduler --protocol tls`: no TLS files for a tls:// address is refused
    here before connecting; clear text to the TLS port is reset by the scheduler and a certificate
    from another CA fails verification (both at once, as CommClosedError, an OSError); the connect
    timeout bounds whatever does not fail at once (an address nobody answers).
    """
    from distributed import Client

    address = cfg.scheduler
    tls = address.startswith("tls://")
    _check_tls_settings(address, security)
    try:
        return Client(address, security=security, timeout=cfg.connect_timeout)
    except (OSError, ValueError) as exc:  # TimeoutError, CommClosedError, ssl.SSLError are OSErrors
        hint = ""
        if not tls and not security.require_encryption:
            hint = (" (if that scheduler uses TLS, give its tls:// address and --tls-ca, --tls-cert, "
                    "--tls-key)")
        raise BadInputError(f"cannot reach Dask scheduler at {address}: {exc}{hint}") from None


def preflight(cfg: ClusterConfig) -> None:
    """What can be checked about the cluster before a command writes anything: the TLS files, SLURM's
    commands, and that an existing --scheduler answers (one connection, closed again). Before, a tls://
    address without TLS files and an unreachable scheduler failed only after the manifest and the
    shards were written."""
    if cfg.scheduler and cfg.slurm:
        raise BadInputError("give either --scheduler or SLURM options, not both")
    check_scheduler_address(cfg.scheduler)
    security = cluster_security(cfg)
    if cfg.slurm:
        check_slurm_commands()
    elif cfg.scheduler:
        _check_tls_settings(cfg.scheduler, security)
        _probe(cfg.scheduler, cfg.connect_timeout)  # a refused port fails at once, not after the timeout
        connect(cfg, security).close()


def _probe(address: str, timeout: str) -> None:
    """BadInputError unless a TCP connection to the scheduler's host and port opens (Dask's own client
    retries a refused connection until its whole timeout)."""
    import socket

    from dask.utils import parse_timedelta
    from distributed.comm.addressing import parse_address, parse_host_port

    protocol, location = parse_address(address, strict=False)
    if protocol not in ("tcp", "tls"):
        return
    host, port = parse_host_port(location)
    try:
        socket.create_connection((host, port), timeout=parse_timedelta(timeout)).close()
    except OSError as exc:
        raise BadInputError(f"cannot reach Dask scheduler at {address}: {exc.strerror or exc}") from None


@contextmanager
def open_cluster(cfg: ClusterConfig) -> Iterator:
    """Yield a connected distributed.Client; closes what it started (never a user's scheduler)."""
    import dask
    from distributed import Client, Scheduler, SpecCluster

    if cfg.scheduler and cfg.slurm:
        raise BadInputError("give either --scheduler or SLURM options, not both")
    security = cluster_security(cfg)
    if cfg.scheduler:
        client = connect(cfg, security)
        try:
            wait_for_workers(client, cfg.worker_timeout, f"the scheduler at {cfg.scheduler}")
            yield client
        finally:
            client.close()
        return
    # Dask takes each pre-spawn variable from os.environ when set there (an earlier cluster in this
    # process leaves its values behind), else from its config: set both, for the cluster's whole life.
    pre = pre_spawn_environ(cfg)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre}), _environ(pre):
        failures: list[str] = []
        if cfg.slurm:
            check_slurm_commands()
            tls = cfg.tls_ca or security.require_encryption
            if not tls:
                print(NO_TLS_WARNING, file=sys.stderr, flush=True)
            cluster, jobs = slurm_cluster(cfg.slurm, security if cfg.tls_ca else None, failures)
            cluster.scale(jobs=jobs)
        else:
            scheduler = {
                "cls": Scheduler,
                "options": {
                    # The scheduler serves HTTP (metrics, health, proxy) even without a dashboard,
                    # on this address; Dask's default for it is every interface.
                    "dashboard_address": loopback_address(cfg.dashboard) or f"{LOOPBACK}:0",
                    "dashboard": cfg.dashboard is not None,
                    **network_options(cfg, security),
                },
            }
            cluster = SpecCluster(
                workers=local_worker_specs(cfg, security), scheduler=scheduler,
                silence_logs=logging.WARNING, security=security,
            )
        try:
            client = Client(cluster, security=security, timeout=cfg.connect_timeout)
            try:
                if cfg.slurm:
                    wait_for_slurm(client, cfg.worker_timeout, failures)
                else:
                    wait_for_workers(client, cfg.worker_timeout, "the local cluster")
                yield client
            finally:
                client.close()
        finally:
            if failures:  # jobqueue's close of a cluster whose jobs never started can fail on its own
                with contextlib.suppress(Exception):
                    cluster.close()
            else:
                cluster.close()
