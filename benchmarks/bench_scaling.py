"""The pipeline at cluster scale, simulated: a GPU-like segmenter, many workers, a big manifest.

On a GPU worker SAM takes ~0.5-2 s per frame and leaves the CPU idle. `replay_segmenter` sleeps that
long (no CPU) and then returns real records (the `graph` segmenter's, cached once per frame), through
the normal `module:factory` plug-in path. Parts (each a row group in scaling.md):

  overhead   1 local worker, 0.5 s per frame, the real frames of shared/data (judo, DAVIS, Sintel,
             Middlebury, KITTI) in 8 shards: wall / (frames x 0.5 s) - 1, cluster start-up apart;
             with 1 task thread and with the 2 of a GPU worker;
  scaling    1, 2, 4, 8 local workers, same segmenter, 8 shards per worker at 8 workers (64 shards of
             the real frames, each listed several times): throughput against 1 worker;
  external   the same against `dask scheduler` + `dask worker` processes (`--scheduler`);
  machinery  `pipeline run` (manifest, shard, segment, index, verify) on 2,000 and 20,000 small frames
             with a 0-second segmenter and 2 workers: ms per frame end to end, per stage, the client's
             peak memory (its growth from 2,000 to 20,000 frames against the manifest's own size), and
             the time to start the cluster;
  phases     per-frame time of each phase inside the tasks (summed over a task's threads).

`python -m benchmarks.bench_scaling [--quick]` (quick: fewer frames and workers, for a smoke test).
The top-level figures of scaling.json are the issue's targets: overhead_1_worker_pct,
speedup_8_workers, machinery_ms_per_frame_20k, store_bytes_vs_pycocotools and
read_speedup_vs_pycocotools (the last two from store.json, written by bench_store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import psutil
from unsamflow.pipeline.cluster import GPU_WORKER_THREADS, ClusterConfig, open_cluster
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.dispatch import segment_shards
from unsamflow.pipeline.images import read_rgb, write_png
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.segmenters.graph import GraphSegmenter
from unsamflow.pipeline.shard import write_shards

from benchmarks.bench_pipeline import real_manifest
from benchmarks.common import RESULTS, write_results
from benchmarks.replay_segmenter import REPLAY_FACTORY as REPLAY
from benchmarks.replay_segmenter import build_cache

REPO = Path(__file__).resolve().parents[1]
GPU_SECONDS = 0.5
PARTS = ("overhead", "scaling", "machinery")


def worker_env() -> dict[str, str]:
    """Workers (local nannies or external processes) import the plug-in from the repository."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def replicated(manifest: Manifest, copies: int, root: Path) -> Manifest:
    """The manifest's frames `copies` times under root/copyK/ (distinct frame ids), as hard links where
    the file system allows (symlinks out of the root are refused by the pipeline, rightly)."""
    frames = []
    for k in range(copies):
        for f in manifest.frames:
            dst = root / f"copy{k}" / f.id
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                try:
                    os.link(manifest.path(f.id), dst)
                except OSError:
                    shutil.copyfile(manifest.path(f.id), dst)
            frames.append(Frame(f"copy{k}/{f.id}", f"copy{k}/{f.sequence}"))
    return Manifest("folder", str(root), frames)


def run_local(shards: list[Path], out: Path, spec: SegmenterSpec, cfg: ClusterConfig) -> dict:
    t0 = time.perf_counter()
    with open_cluster(cfg) as client:
        startup = time.perf_counter() - t0
        res = segment_shards(shards, out, spec, DeriveConfig().to_dict(), client, progress=False)
    if res.failed or res.bad:
        raise SystemExit(f"bench_scaling: run failed:\n{res.summary()}")
    return {"frames": res.frames, "shards": len(shards), "seconds": res.wall_s,
            "frames_per_s": res.frames / res.wall_s, "cluster_startup_s": startup,
            "segmenter_in_workers_s": res.segmenter_s, "tasks_s": res.task_s,
            "phases_ms_per_frame": {k: 1e3 * v / res.frames for k, v in res.phases_s.items()}}


class ExternalCluster:
    """`dask scheduler` and `dask worker` as separate processes on loopback, as a user starts them."""

    def __init__(self, workers: int, work: Path):
        self.file = work / "scheduler.json"
        self.file.unlink(missing_ok=True)
        dask = str(Path(sys.executable).with_name("dask"))  # the CLI installed beside this interpreter
        env = worker_env()
        env.update({"MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)})
        self.procs = [subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(self.file)], env=env, cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("bench_scaling: the dask scheduler did not start in 60 s")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but give it a moment
        self.address = json.loads(self.file.read_text())["address"]
        self.procs.append(subprocess.Popen(
            [dask, "worker", self.address, "--nworkers", str(workers), "--nthreads", str(GPU_WORKER_THREADS),
             "--host", "127.0.0.1", "--no-dashboard"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def small_frames(n: int, root: Path, cache: Path, distinct: int = 40) -> Path:
    """`n` small frames (96 x 128, from real frames) as hard links of `distinct` PNGs, 100 per folder."""
    src = root / "_distinct"
    if not src.is_dir():
        src.mkdir(parents=True)
        real = real_manifest()
        images = []
        for i, f in enumerate(real.frames[:distinct]):
            rgb, _ = read_rgb(real.path(f.id))
            small = cv2.resize(rgb, (128, 96), interpolation=cv2.INTER_AREA)
            write_png(src / f"{i:03d}.png", small)
            images.append((f.id, small))
        build_cache(images, cache, GraphSegmenter(max_side=128, min_area=64))
    pngs = sorted(src.glob("*.png"))
    data = root / f"frames{n}"
    if not data.is_dir():
        for i in range(n):
            d = data / f"seq{i // 100:04d}"
            d.mkdir(parents=True, exist_ok=True)
            os.link(pngs[i % len(pngs)], d / f"{i % 100:05d}.png")
    return data


def machinery(n: int, data: Path, out: Path, cache: Path, workers: int) -> dict:
    """`pipeline run` as a user runs it, 0-second segmenter; the client's RSS sampled every 50 ms."""
    shards = max(8, n // 250)
    cmd = [sys.executable, "-m", "unsamflow.pipeline", "run", "--layout", "folder", "--root", str(data),
           "--out", str(out), "--shards", str(shards), "--workers", str(workers), "--no-dashboard",
           "--segmenter", REPLAY, "-o", f"cache={cache}", "-o", "seconds=0", "--pictures", "0",
           "--quiet", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=worker_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    client = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, client.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_scaling: pipeline run on {n} frames exited {proc.returncode}:\n"
                         f"{stderr[-3000:]}")
    summary = json.loads(stdout)
    seg = summary["segment"]
    return {"frames": n, "shards": shards, "workers": workers, "seconds": wall,
            "ms_per_frame": 1e3 * wall / n,
            "stages_s": summary["stages_s"], "cluster_startup_s": seg["startup_s"],
            "client_peak_rss_mib": peak / 2**20,
            "manifest_bytes": (out / "manifest.json").stat().st_size,
            "phases_ms_per_frame": {k: 1e3 * v / seg["frames"] for k, v in seg["phases_s"].items()}}


def main(argv: list[str] | tuple[str, ...] = ()) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and workers: a smoke test")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="measure only these; the other parts' rows and figures are kept from the last "
                         "scaling.json (e.g. to re-measure one part on a quiet machine)")
    args = ap.parse_args(list(argv))
    os.environ.update({k: v for k, v in worker_env().items() if k in ("PYTHONPATH", "OMP_NUM_THREADS")})
    sys.path.insert(0, str(REPO))
    work = args.keep or Path(tempfile.mkdtemp(prefix="unsamflow-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    worker_counts = (1, 2) if args.quick else (1, 2, 4, 8)
    copies = 1 if args.quick else 8  # 344 frames: ~5 per shard at 64 shards
    big = (500, 2000) if args.quick else (2000, 20000)
    rows: list[dict] = []
    out: dict = {}
    try:
        real = real_manifest()
        cache = work / "replay-real.pkl"
        t0 = time.perf_counter()
        made = build_cache(((f.id, read_rgb(real.path(f.id))[0]) for f in real.frames), cache)
        print(f"cache: {made['frames']} real frames, {made['masks']} masks, graph took "
              f"{made['seconds']:.1f} s ({time.perf_counter() - t0:.1f} s in all)", flush=True)
        spec = SegmenterSpec(REPLAY, {"cache": str(cache), "seconds": GPU_SECONDS})

        # overhead: one worker, the real frames once, 8 shards; with 1 task thread and with the 2 that a
        # GPU worker runs (tasks take turns in the model; one prepares while the other segments)
        shards = write_shards(real, 8, work / "shards-overhead")
        for threads in (1, GPU_WORKER_THREADS) if "overhead" in args.parts else ():
            dest = work / f"stores-overhead-{threads}"
            r = run_local(shards, dest, spec, ClusterConfig(workers=1, threads_per_worker=threads,
                                                             dashboard=None))
            shutil.rmtree(dest, ignore_errors=True)
            ideal = r["frames"] * GPU_SECONDS
            pct = 100 * (r["seconds"] / ideal - 1)
            rows.append({"part": "overhead", "setting": f"1 local worker, {threads} thread(s), 0.5 s/frame",
                         **_flat(r), "ideal_s": ideal, "overhead_pct": pct})
            out[f"overhead_1_worker_{threads}_threads_pct"] = pct
            print(rows[-1], flush=True)
        if "overhead" in args.parts:
            out["overhead_1_worker_pct"] = out[f"overhead_1_worker_{GPU_WORKER_THREADS}_threads_pct"]
            out["phases_ms_per_frame_0_5s"] = r["phases_ms_per_frame"]

        # scaling, local and external
        many = replicated(real, copies, work / "replicas")
        n_shards = 8 * max(worker_counts)
        shards = write_shards(many, n_shards, work / "shards-scaling")
        for kind in ("local", "external") if "scaling" in args.parts else ():
            base = None
            # external: 1 and the most workers (the full sweep is the local one; each 1-worker run of
            # the replicated frames takes minutes)
            for w in worker_counts if kind == "local" else (1, max(worker_counts)):
                dest = work / f"stores-{kind}-{w}"
                if kind == "local":
                    cfg = ClusterConfig(workers=w, threads_per_worker=GPU_WORKER_THREADS, dashboard=None)
                    r = run_local(shards, dest, spec, cfg)
                else:
                    ext = ExternalCluster(w, work)
                    try:
                        cfg = ClusterConfig(scheduler=ext.address, worker_timeout=60)
                        r = run_local(shards, dest, spec, cfg)
                    finally:
                        ext.close()
                base = base or r["frames_per_s"]
                speedup = r["frames_per_s"] / base
                rows.append({"part": f"scaling ({kind})", "setting": f"{w} worker(s), 0.5 s/frame",
                             **_flat(r), "speedup_vs_1": speedup, "efficiency_pct": 100 * speedup / w})
                out[f"speedup_{w}_workers" + ("" if kind == "local" else "_external")] = speedup
                print(rows[-1], flush=True)
                shutil.rmtree(dest, ignore_errors=True)

        # machinery: a big manifest of small frames, 0-second segmenter
        small_cache = work / "replay-small.pkl"
        runs = {}
        for n in big if "machinery" in args.parts else ():
            data = small_frames(n, work / "small", small_cache)
            dest = work / f"run-{n}"
            shutil.rmtree(dest, ignore_errors=True)
            runs[n] = machinery(n, data, dest, small_cache, workers=2)
            shutil.rmtree(dest, ignore_errors=True)
            rows.append({"part": "machinery", "setting": f"pipeline run, {n} frames of 96x128, 0 s/frame",
                         **_flat(runs[n])})
            print(rows[-1], flush=True)
        lo, hi = runs.get(big[0]), runs.get(big[1])
        if runs:
            growth = (hi["client_peak_rss_mib"] - lo["client_peak_rss_mib"]) * 2**20 / (big[1] - big[0])
            manifest_per_frame = (hi["manifest_bytes"] - lo["manifest_bytes"]) / (big[1] - big[0])
            out["machinery_ms_per_frame_20k"] = hi["ms_per_frame"]
            out["client_rss_growth_bytes_per_frame"] = growth
            out["manifest_json_bytes_per_frame"] = manifest_per_frame
            out["cluster_startup_s"] = hi["cluster_startup_s"]
            out["phases_ms_per_frame_small"] = hi["phases_ms_per_frame"]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    rows, out = kept_from_last_run(args.parts, rows, out)
    store = RESULTS / "store.json"
    if store.exists():
        figures = json.loads(store.read_text())
        for key in ("store_bytes_vs_pycocotools", "read_speedup_vs_pycocotools"):
            if key in figures:
                out[key] = figures[key]
    out["quick"] = args.quick
    notes = (
        f"Simulated GPU: `{REPLAY}` sleeps {GPU_SECONDS} s per frame (no CPU), then returns the "
        "cached `graph` records of that frame (segment-anything's run-length form). overhead = wall / "
        "(frames x 0.5 s) - 1, cluster start-up apart. Simulated-GPU workers run "
        f"{GPU_WORKER_THREADS} task threads, as the pipeline's GPU workers do (they take turns in the "
        "model). speedup = throughput / throughput with 1 worker. machinery = `pipeline run` wall "
        "(manifest .. verify, cluster start included) / frames, 2 single-thread workers, 0-second "
        f"segmenter. Machine: {os.cpu_count()} CPU cores. Phase times are per frame, summed over a "
        "task's threads (read-ahead, segmenter, finisher), so they overlap; wait = time a task waited "
        "for the model while another task's frame was in it.")
    print(write_results("scaling", rows, notes, summary=out).read_text())


def kept_from_last_run(parts: list[str], rows: list[dict], out: dict) -> tuple[list[dict], dict]:
    """With --parts, the rows and figures of the parts not measured now, from the last scaling.json."""
    last = RESULTS / "scaling.json"
    if set(parts) == set(PARTS) or not last.exists():
        return rows, out
    data = json.loads(last.read_text())
    old_rows = [r for r in data["rows"] if r["part"].split(" ")[0] not in parts]
    old_out = {k: v for k, v in data.items() if k not in ("benchmark", "machine", "rows", "notes")}
    merged = sorted(old_rows + rows, key=lambda r: PARTS.index(r["part"].split(" ")[0]))
    return merged, {**old_out, **out, "measured_now": parts}


def _flat(r: dict) -> dict:
    """Row cells: numbers as they are, the phase dict as one compact text cell."""
    cells = {k: v for k, v in r.items() if not isinstance(v, dict)}
    for key in ("phases_ms_per_frame", "stages_s"):
        if key in r:
            cells[key] = " ".join(f"{k} {v:.2f}" for k, v in r[key].items())
    return cells


if __name__ == "__main__":
    main(sys.argv[1:])
