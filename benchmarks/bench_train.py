"""One training step at 256 x 832, batch 8, on CPU: seconds per phase for the base and the full preset.

Phases (trainer.engine.timing): data wait, augmentation (appearance, spatial, occlusion crop, key-object
paste and push), forward (all network passes: main both directions, spatial, occlusion), each loss,
backward (the network's and the losses' gradients together: autograd does not split them), optimiser
(clip + Adam + OneCycle). The full preset (kitti-aug-hg-mf) is timed in its last stage (census, spatial
+ occlusion passes, key objects pasted from a full cache, homography loss); the base (kitti-base) in
its last stage (census, spatial + occlusion passes). Data: synthetic scenes at 256 x 832 with stores
from the weight-free default segmenter, made once in a temporary folder (BENCH_TRAIN_DATA=DIR keeps it).

Run: .venv/bin/python -m benchmarks.bench_train [--steps 2]   (about 10 minutes on 2 cores)
Targets: network forward + backward >= 70 % of the full preset's step; homography loss <= 10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, write_results

PRESETS = {"base": "kitti-base", "full": "kitti-aug-hg-mf"}
SIZE, BATCH = (256, 832), 8


def make_data(folder: Path) -> tuple[Path, Path]:
    """Synthetic frames (3 sequences x 4 frames = 9 pairs) and their mask stores, made in subprocesses:
    threads left by the writers in this process could deadlock the loader's forked workers."""
    root, masks = folder / "data", folder / "masks"
    py = [sys.executable, "-m", "unsamflow.pipeline"]
    synth = ["synth", "--out", str(root), "--sequences", "3", "--frames", "4",
             "--size", f"{SIZE[0]}x{SIZE[1]}", "--seed", "0", "--difficulty", "medium"]  # fmt: skip
    subprocess.run(py + synth, check=True, stdout=subprocess.DEVNULL)
    if not (masks / "stores" / "index.json").exists():
        run = ["run", "--manifest", str(root / "manifest.json"), "--out", str(masks), "--shards", "1",
               "--workers", "1", "--pictures", "0", "--key-min-h", "24", "--key-min-w", "24",
               "--key-min-overlaps", "1", "--no-dashboard"]  # fmt: skip
        subprocess.run(py + run, check=True, stdout=subprocess.DEVNULL)
    return root, masks / "stores"


def time_preset(preset: str, root: Path, stores: Path, steps: int, workers: int) -> dict[str, float]:
    """Median seconds per phase over `steps` steps (after one warm-up step) in the preset's last stage."""
    from unsamflow.trainer.config import load_config, stage_starts
    from unsamflow.trainer.engine.run import build_trainer, prepare

    cfg = load_config(preset, [
        f"data.roots.synthetic={root}", f"data.masks.synthetic={stores}", "data.dataset=synthetic",
        "data.val_dataset=null", "device=cpu", f"data.workers={workers}", f"optim.batch_size={BATCH}",
        f"data.crop=[{SIZE[0]},{SIZE[1]}]", "optim.iterations=1000", "data.check=size",
        "augment.key_objects.cache_size=8",  # full after one push of 8 samples: pasting is timed
    ])  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(prepare(cfg, Path(tmp) / "run"), with_hooks=False)
    trainer.iteration = stage_starts(cfg)[-1]
    times: list[dict[str, float]] = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        trainer.run_step()
        trainer.iteration += 1
        phases = dict(trainer.step_times)
        phases["step"] = time.perf_counter() - t0
        if i:  # the first step warms up (allocations, loader workers starting)
            times.append(phases)
    cache = trainer.objective.cache
    keys = sorted({k for t in times for k in t})
    out = {k: statistics.median(t.get(k, 0.0) for t in times) for k in keys}
    out["pasted"] = float(cache is not None and cache.full and trainer.result.pasted is not None)
    return out


def loader_rate() -> float | None:
    """Loader samples/s at these settings from the data engineer's benchmarks/results/loader.json."""
    path = RESULTS / "loader.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    for key, value in data.items():
        if "samples_per_s" in key and isinstance(value, (int, float)):
            return float(value)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep = os.environ.get("BENCH_TRAIN_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep) if keep else Path(tmp)
        root, stores = make_data(folder)
        results = {name: time_preset(preset, root, stores, args.steps, args.workers)
                   for name, preset in PRESETS.items()}  # fmt: skip
    rows = []
    for name, t in results.items():
        network = t.get("forward", 0.0) + t.get("backward", 0.0)
        rows.append({"preset": f"{name} ({PRESETS[name]})", **{k: round(v, 4) for k, v in t.items()},
                     "network_fraction": network / t["step"]})  # fmt: skip
    full = results["full"]
    train_rate = BATCH / full["step"]
    loader = loader_rate()
    figures = {
        "step_s_full_preset": full["step"],
        "network_fraction_full_preset": (full.get("forward", 0) + full.get("backward", 0)) / full["step"],
        "homography_fraction_full_preset": full.get("loss_homography", 0.0) / full["step"],
        "loader_vs_step_rate": loader / train_rate if loader is not None else None,
    }
    load = os.getloadavg()[0]
    shown = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}" for k, v in figures.items())
    notes = (f"One step at {SIZE[0]}x{SIZE[1]}, batch {BATCH}, CPU, {args.threads} torch threads, "
             f"{args.workers} loader workers; median of {args.steps} steps after a warm-up step, in each "
             "preset's last stage. Seconds per phase; `backward` holds the losses' gradients as well as the "
             f"network's. Load average at the end: {load:.1f} (shared machine). Figures: {shown}")
    md = write_results("train_step", rows, notes)
    path = RESULTS / "train_step.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, **figures}, indent=1))  # top-level figures next to the rows
    print(md.read_text())


if __name__ == "__main__":
    main()
