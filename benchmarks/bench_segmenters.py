"""Every segmenter backend on the same real frames: seconds and masks per frame, and the pipeline's
overhead beside each.

Frames: the first of judo, Sintel alley_1 (clean), KITTI 2015 and Middlebury RubberWhale from
../shared/data, at their own sizes (the SAM family resizes to 1024 internally; masks come back at full
size). For each backend:
  s_per_frame      the segmenter call alone, in this process (what a worker must do per frame);
  masks_per_frame  records per frame;
  pipeline_s_per_frame  `segment` on a 1-worker local Dask cluster, time inside the shard task per frame
                   (read, segment, record checks, derive, HDF5 write), building the segmenter left out;
  overhead_pct     pipeline / segmenter inside that same task - 1 (the pipeline's own share);
  build_s          building the segmenter in the worker (imports, checkpoint check and load).
Both sides use the same number of threads (UNSAMFLOW_BENCH_THREADS, default 2).

No weights can be downloaded here: the SAM family runs the real architectures (ViT-B SAM and HQ-SAM,
Hiera SAM 2 sizes) with random weights, through checkpoint files written on the spot. Their times are
those of the real models (a forward pass costs the same whatever the weights are); their mask counts
are NOT (random weights pass the quality filters rarely; pretrained models keep tens to hundreds of
masks per frame, and more masks cost more post-processing). A missing optional package is reported in
the table, not fatal.

Knobs: UNSAMFLOW_BENCH_FRAMES (default 4), UNSAMFLOW_BENCH_POINTS (points per side; default 32 on a GPU,
16 on a CPU), UNSAMFLOW_BENCH_MODELS (comma list of backend[:model_type]; default graph, sam:vit_b,
sam2:tiny, sam2:base+, sam-hq:vit_b, and on a GPU also sam:vit_h, sam2:large, sam-hq:vit_h).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.dispatch import segment_shards
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec

from benchmarks.common import write_results

SHARED = Path(
    os.environ.get("UNSAMFLOW_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
FRAMES = [
    "video/judo/00000.jpg",
    "sintel/training/clean/alley_1/frame_0001.png",
    "kitti2015/training/image_2/000000_10.png",
    "middlebury/other-data/RubberWhale/frame10.png",
]
GPU = torch.cuda.is_available()
DEFAULT_MODELS = ["graph", "sam:vit_b", "sam2:tiny", "sam2:base+", "sam-hq:vit_b"]
if GPU:
    DEFAULT_MODELS += ["sam:vit_h", "sam2:large", "sam-hq:vit_h"]


def random_checkpoint(backend: str, model_type: str, folder: Path) -> Path:
    """A checkpoint of the real architecture with random weights, in the layout the backend loads."""
    path = folder / f"{backend}-{model_type.replace('+', 'plus')}.pth"
    if backend == "sam":
        from unsamflow.pipeline.segmenters.sam import build_sam_model

        torch.save(build_sam_model(model_type).state_dict(), path)
    elif backend == "sam2":
        from unsamflow.pipeline.segmenters.sam2 import build_sam2_model

        torch.save({"model": build_sam2_model(model_type).state_dict()}, path)
    elif backend == "sam-hq":
        from unsamflow.pipeline.segmenters.sam_hq import build_sam_hq_model

        torch.save(build_sam_hq_model(model_type).state_dict(), path)
    else:
        raise ValueError(backend)
    return path


def spec_for(entry: str, points: int, folder: Path) -> SegmenterSpec:
    backend, _, model_type = entry.partition(":")
    if backend == "graph":
        return SegmenterSpec("graph")
    ckpt = random_checkpoint(backend, model_type, folder)
    options = {"checkpoint": str(ckpt), "model_type": model_type, "points_per_side": points}
    return SegmenterSpec(backend, options)


def main() -> None:
    threads = int(os.environ.get("UNSAMFLOW_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    points = int(os.environ.get("UNSAMFLOW_BENCH_POINTS", "32" if GPU else "16"))
    models = [m for m in os.environ.get("UNSAMFLOW_BENCH_MODELS", ",".join(DEFAULT_MODELS)).split(",") if m]
    count = int(os.environ.get("UNSAMFLOW_BENCH_FRAMES", "4"))
    frames = [f for f in FRAMES if (SHARED / f).is_file()][:count]
    if not frames:
        raise SystemExit(f"no frames under {SHARED}: set UNSAMFLOW_SHARED_DATA")
    images = [read_rgb(SHARED / f)[0] for f in frames]
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    work = Path(tempfile.mkdtemp(prefix="unsamflow-bench-seg-"))
    rows = []
    try:
        manifest = Manifest("folder", str(SHARED), [Frame(f, f.rsplit("/", 1)[0]) for f in frames],
                            meta={"shard": 0, "num_shards": 1})
        shard = manifest.save(work / "shards" / "shard-00000-of-00001.json")
        for entry in models:
            row: dict = {"backend": entry}
            try:
                spec = spec_for(entry, points, work)
                seg = build_segmenter(spec)
            except BadInputError as exc:  # e.g. an optional package that is not installed
                rows.append({**row, "note": str(exc).split(";")[0]})
                print(rows[-1], flush=True)
                continue
            if entry == "graph":  # warm-up (lazy imports); a SAM-family forward is too long to repeat
                seg(images[0])
            t_seg, n_masks = 0.0, 0
            for im in images:
                t0 = time.perf_counter()
                n_masks += len(seg(im))
                t_seg += time.perf_counter() - t0
            del seg
            # A cluster per backend: Dask keys a shard's task by its store name, so a second run of the
            # same shard on one client would be answered with the first one's finished result.
            with open_cluster(ClusterConfig(workers=1, threads_per_worker=threads, dashboard=None)) as client:
                client.wait_for_workers(1)
                res = segment_shards([shard], work / f"stores-{len(rows)}", spec, DeriveConfig().to_dict(),
                                     client, progress=False)
            assert not res.failed and not res.bad, res.summary()
            in_tasks = res.task_s - res.build_s  # a shard task's time includes building the segmenter
            row.update({
                "s_per_frame": t_seg / len(images),
                "masks_per_frame": n_masks / len(images),
                "pipeline_s_per_frame": in_tasks / res.frames,
                "overhead_pct": 100 * (in_tasks / res.segmenter_s - 1),
                "build_s": res.build_s,
            })
            rows.append(row)
            print(row, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    device = torch.cuda.get_device_name(0) if GPU else f"CPU, {threads} threads"
    notes = (f"{len(images)} real frames ({', '.join(sizes)}) on {device}; SAM family at points_per_side="
             f"{points}, other options at each generator's defaults. SAM-family rows use random weights: "
             "their seconds are those of the real architecture, their mask counts are not those of the "
             "released models.")
    print(write_results("segmenters", rows, notes).read_text())


if __name__ == "__main__":
    main()
