"""Pipeline overhead and scaling: `segment` end to end against the segmenter's own time.

On the real frames of ../shared/data (judo, DAVIS, Sintel clean+final, Middlebury colour, KITTI):
  t_seg   sum over frames of the segmenter call alone, in one process (the work that must be done);
  t_1     `segment_shards` wall time with 1 local worker (read, segment, derive, HDF5 write, Dask);
  t_2     the same with 2 workers.
overhead = t_1 / t_seg - 1; speedup = t_1 / t_2. Cluster start-up is reported apart from t_1/t_2.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.dispatch import segment_shards
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.shard import write_shards

from benchmarks.common import write_results

SHARED = Path(
    os.environ.get("UNSAMFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
SEQUENCES = [
    "video/judo", "video/davis_flow_demo",
    *[f"sintel/training/{p}/{s}" for p in ("clean", "final")
      for s in ("alley_1", "cave_2", "market_5", "bandage_1", "temple_3")],
    *[f"middlebury/other-data/{s}" for s in ("Dimetrodon", "RubberWhale", "Venus")],
    "kitti2015/training/image_2", "kitti2012/training/colored_0",
]


def real_manifest() -> Manifest:
    frames = []
    for seq in SEQUENCES:
        d = SHARED / seq
        if d.is_dir():
            frames += [Frame(f"{seq}/{p.name}", seq) for p in sorted(d.iterdir())
                       if p.suffix.lower() in (".png", ".jpg")]
    return Manifest("folder", str(SHARED), frames)


def main() -> None:
    manifest = real_manifest()
    spec = SegmenterSpec("graph")
    seg = build_segmenter(spec)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_seg = 0.0
    for f in manifest.frames:  # the segmenter alone, one frame at a time, as a worker calls it
        rgb, _ = read_rgb(manifest.path(f.id))
        t0 = time.perf_counter()
        seg(rgb)
        t_seg += time.perf_counter() - t0
    rows = [{"setting": "segmenter alone (sum over frames)", "frames": len(manifest.frames),
             "seconds": t_seg, "frames_per_s": len(manifest.frames) / t_seg}]
    work = Path(tempfile.mkdtemp(prefix="unsamflow-bench-"))
    try:
        shards = write_shards(manifest, 16, work / "shards")  # several per worker
        walls = {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            with open_cluster(ClusterConfig(workers=workers, dashboard=None)) as client:
                client.wait_for_workers(workers)
                startup = time.perf_counter() - t0
                res = segment_shards(shards, work / f"stores{workers}", spec, DeriveConfig().to_dict(),
                                     client, progress=False)
            assert not res.failed and not res.bad, res.summary()
            walls[workers] = res.wall_s
            rows.append({"setting": f"segment, {workers} worker(s)", "frames": res.frames,
                         "seconds": res.wall_s, "frames_per_s": res.frames / res.wall_s,
                         "overhead_vs_segmenter_pct": 100 * (res.wall_s * workers / t_seg - 1),
                         "segmenter_in_workers_s": res.segmenter_s,
                         "tasks_s": res.task_s, "build_s": res.build_s, "cluster_startup_s": startup})
        rows.append({"setting": "speedup 2 workers vs 1", "seconds": walls[1] / walls[2]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = ("Default `graph` segmenter on the real frames of shared/data. overhead = wall * workers / "
             "segmenter-alone - 1 (for 2 workers this also counts imbalance between them).")
    print(write_results("pipeline", rows, notes).read_text())


if __name__ == "__main__":
    main()
