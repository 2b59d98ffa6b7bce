"""Training-data loader: samples/s of trainer.data alone (KITTI-sized frames, real pipeline stores), the
up-front file checks (hash vs size), and the engine's augmentation per batch on the loader's batches.

Data: `pipeline synth` scenes at 375 x 1242 (KITTI's size), segmented by the pipeline itself (`pipeline
run`, the weight-free default graph segmenter on a local Dask cluster, KITTI key-object thresholds), so
the stores are exactly what training reads. Samples: random 256 x 832 crops, horizontal flips and
frame swaps, full_seg of both frames and up to 8 key masks; no GT (as in training).

Run: .venv/bin/python -m benchmarks.bench_loader   (first run generates and segments; later runs reuse)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from unsamflow.pipeline.store import Index
from unsamflow.trainer.data import CoTransformConfig, build_loader, open_pairs, set_epoch
from unsamflow.trainer.data.checks import StoredFrame, check_files

from benchmarks.common import RESULTS, write_results

WORK = Path(os.environ.get("UNSAMFLOW_BENCH_WORK", "/tmp/unsamflow-bench-loader"))
SIZE = (375, 1242)
CROP = (256, 832)
SEQUENCES, FRAMES = 4, 6  # 24 frames, 20 pairs
BATCH, WORKERS, BATCHES = 8, 2, 12


def prepare() -> tuple[Path, Path, dict]:
    """Synthetic KITTI-sized frames and their stores from `pipeline run` (skipped when already there)."""
    root, out = WORK / "synthetic", WORK / "masks"
    timings = {}
    py = [sys.executable, "-m", "unsamflow.pipeline"]
    if not (root / "manifest.json").is_file():
        t = time.perf_counter()
        subprocess.run([*py, "synth", "--out", str(root), "--sequences", str(SEQUENCES),
                        "--frames", str(FRAMES), "--size", f"{SIZE[0]}x{SIZE[1]}", "--seed", "0"], check=True)
        timings["synth_s"] = time.perf_counter() - t
    if not (out / "stores" / "index.json").is_file():
        t = time.perf_counter()
        subprocess.run([*py, "run", "--manifest", str(root / "manifest.json"), "--out", str(out),
                        "--shards", "2", "--workers", "2", "--pictures", "0"], check=True)
        timings["segment_s"] = time.perf_counter() - t
    return root, out / "stores", timings


def check_times(root: Path, stores: Path) -> dict:
    """ms per frame of the up-front file check, hashing vs header sizes (threads as open_pairs uses)."""
    index = Index.load(stores)
    frames = []
    for fid in index.frame_ids:
        store, row = index.store_for(fid)
        frames.append(StoredFrame(fid, root / fid, store.image_shape(row), store.sha256(row)))
    out = {"frame_file_kib": statistics.mean((root / f.frame_id).stat().st_size for f in frames) / 1024}
    for mode in ("hash", "size"):
        t = time.perf_counter()
        for _ in range(3):
            assert not check_files(frames, mode)
        out[f"check_{mode}_ms_per_frame"] = 1e3 * (time.perf_counter() - t) / (3 * len(frames))
    index.close()
    return out


def loader_rate(root: Path, stores: Path) -> tuple[float, float, list[dict]]:
    """(samples/s with 2 workers after warm-up, ms per sample in one process, a few batches to augment)."""
    transform = CoTransformConfig(CROP, hflip=True, swap=True)
    ds = open_pairs("synthetic*20", roots={"synthetic": root}, masks={"synthetic": stores},
                    transform=transform, max_key_objects=8, gt=False, check="none")
    t = time.perf_counter()
    for i in range(16):
        ds[i]
    inline_ms = 1e3 * (time.perf_counter() - t) / 16
    loader = build_loader(ds, BATCH, seed=0, num_workers=WORKERS, start_method="fork")
    set_epoch(loader, 0)
    it = iter(loader)
    first = [next(it) for _ in range(2)]  # workers started, queues primed
    t = time.perf_counter()
    for _ in range(BATCHES):
        next(it)
    rate = BATCHES * BATCH / (time.perf_counter() - t)
    del it
    return rate, inline_ms, first


def augment_ms(batches: list[dict], gt_root: Path, stores: Path) -> float:
    """The engine's second-pass augmentation (trainer/augment via bench_augment.augment_step) on real loader
    batches with the synthetic scenes' exact flow as the pseudo-label, 2 CPU threads, cache full."""
    from unsamflow.trainer.augment import CROP_PRESETS, KeyObjectCache

    from benchmarks.bench_augment import augment_step

    ds = open_pairs("synthetic", roots={"synthetic": gt_root}, masks={"synthetic": stores},
                    transform=CoTransformConfig(CROP, hflip=True), gt=True, check="none")
    gt = torch.utils.data.default_collate([ds[i] for i in range(BATCH)])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        cache = KeyObjectCache(100)
        times = []
        for rep in range(6):
            b = batches[rep % len(batches)]
            d = {"img1": b["img1"], "img2": b["img2"], "flow": gt["flow"], "noc": ~gt["occ"][:, None],
                 "seg": b["full_seg1"], "key_masks": b["key_masks"], "key_count": b["key_count"]}
            while not cache.full and int(d["key_count"].sum()):
                cache.push(d["img1"], d["key_masks"], d["key_count"], d["flow"], g)
            t = time.perf_counter()
            augment_step(d, cache, g, CROP_PRESETS["kitti"])
            if rep:  # the first round warms up
                times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def main() -> dict:
    root, stores, prep = prepare()
    checks = check_times(root, stores)
    rate, inline_ms, batches = loader_rate(root, stores)
    keys = torch.cat([b["key_count"] for b in batches]).float().mean().item()
    try:
        aug = augment_ms(batches, root, stores)
    except ImportError:  # trainer/augment not there
        aug = None
    row = {"frames": f"{SIZE[0]}x{SIZE[1]} PNG", "crop": f"{CROP[0]}x{CROP[1]}", "batch": BATCH,
           "workers": WORKERS, "samples_per_s": rate, "ms_per_sample_1proc": inline_ms,
           "key_masks_per_sample": keys, **checks, "augment_ms_per_batch": aug, **prep}
    notes = (
        f"Loader alone (trainer.data, {WORKERS} forked workers, batch {BATCH}, after 2 warm-up batches, "
        f"{BATCHES} batches timed): `pipeline synth` frames at {SIZE[0]}x{SIZE[1]} segmented by "
        f"`pipeline run` (graph segmenter, KITTI key-object thresholds), random {CROP[0]}x{CROP[1]} crops, "
        f"hflip and swap, full_seg of both frames and up to 8 key masks, no GT. ms_per_sample_1proc: the "
        f"same samples read in one process. check_*_ms_per_frame: the up-front check of every frame's file "
        f"against its store (sha256 of the file vs the header size; {min(8, os.cpu_count() or 1)} threads). "
        f"augment_ms_per_batch: trainer/augment's second pass (appearance, spatial, paste from a full "
        f"key-object cache, occlusion crop, push) on these batches, 2 threads. Load average at the end: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores shared with other jobs (rates vary with load)."
    )
    write_results("loader", [row], notes=notes)
    path = RESULTS / "loader.json"
    data = json.loads(path.read_text())
    top = {"loader_samples_per_s": rate, "augment_ms_per_batch": aug}  # read by bench_train and the README
    data = {"benchmark": data.pop("benchmark"), **top, **data}
    path.write_text(json.dumps(data, indent=1))
    return row


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
    print((RESULTS / "loader.md").read_text())
