"""The measurements of the GPU check, one function each; benchmarks/gpu_check.py runs each in a process of
its own under a deadline and collects what it returns (a dict of figures, JSON-serialisable).

Only public entry points are used (PWCLite and `correlation` from trainer.model, presets through
trainer.config, the training step through trainer.engine.run's prepare/build_trainer/train, the
evaluation package, the segmenter registry, `segment_shards` and the pipeline CLI), so work on the
network's internals does not break the check. `Ctx.smoke` shrinks every size to run on a CPU in seconds;
CUDA-only variants are then recorded as skipped with that reason.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data"
# Real frames the repository ships: two KITTI-sized (375 x 1242) and two Sintel-sized (436 x 1024).
SAM_FRAMES = {
    "kitti": ["kitti2015/training/image_2/000000_10.png", "kitti2015/training/image_2/000000_11.png"],
    "sintel": ["sintel/training/clean/alley_1/frame_0002.png",
               "sintel/training/clean/alley_1/frame_0003.png"],
}
CUDA_ONLY = "CUDA only: skipped on CPU"


@dataclass
class Ctx:
    smoke: bool  # tiny sizes on the CPU
    work: Path  # scratch shared by the measurements of one run (data sets, checkpoints)
    out: Path  # the output folder (pictures go here)
    deadline: float  # time.time() by which this measurement must have returned
    partial: Path | None = None  # where figures so far go (kept if the measurement is stopped)

    def save_partial(self, figures: dict) -> None:
        """Figures so far: what the results keep if this measurement runs out of time or crashes."""
        if self.partial is not None:
            self.partial.write_text(json.dumps(figures, indent=1, default=str))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu" if self.smoke or not torch.cuda.is_available() else "cuda")

    def left(self) -> float:
        return self.deadline - time.time()

    def pick(self, gpu: Any, smoke: Any) -> Any:
        return smoke if self.smoke else gpu


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


# --- data made on the spot -------------------------------------------------------------------------------
def synthetic_set(ctx: Ctx, name: str, size: tuple[int, int], sequences: int, frames: int, seed: int,
                  masks: bool = True) -> tuple[Path, Path | None]:  # fmt: skip
    """Synthetic scenes (exact flow) made with `pipeline synth`, and their stores made with `pipeline run`
    (the weight-free segmenter on CPU workers), once per run; (root, stores)."""
    root, mask_out = ctx.work / name, ctx.work / f"{name}-masks"
    py = [sys.executable, "-m", "unsamflow.pipeline"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TQDM_DISABLE": "1"}  # the graph segmenter: CPU workers
    if not (root / "manifest.json").exists():
        args = ["synth", "--out", str(root), "--sequences", str(sequences), "--frames", str(frames),
                "--size", f"{size[0]}x{size[1]}", "--seed", str(seed), "--difficulty", "easy", "-q"]
        subprocess.run(py + args, check=True, env=env, stdout=subprocess.DEVNULL)
    if not masks:
        return root, None
    if not (mask_out / "stores" / "index.json").exists():
        workers = str(ctx.pick(min(8, os.cpu_count() or 1), 1))
        args = ["run", "--manifest", str(root / "manifest.json"), "--out", str(mask_out), "--shards", workers,
                "--workers", workers, "--pictures", "0", "--key-min-h", "16", "--key-min-w", "16",
                "--key-min-overlaps", "1", "--no-dashboard", "-q"]
        subprocess.run(py + args, check=True, env=env, stdout=subprocess.DEVNULL)
    return root, mask_out / "stores"


SMOKE_SIZE = (64, 128)


def smoke_set(ctx: Ctx) -> tuple[Path, Path]:
    """The smoke run's one small training set (the training step and the learning run share it)."""
    root, stores = synthetic_set(ctx, "smoke", SMOKE_SIZE, sequences=2, frames=3, seed=0)
    assert stores is not None
    return root, stores


# --- environment -----------------------------------------------------------------------------------------
def measure_env(ctx: Ctx) -> dict:
    """Versions and the device, as this run sees them."""
    import importlib.metadata as md
    import platform

    versions = {}
    for pkg in ("torch", "torchvision", "numpy", "h5py", "dask", "distributed", "segment-anything", "sam2",
                "segment-anything-hq", "timm", "opencv-python-headless", "unsamflow"):  # fmt: skip
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    import unsamflow

    out = {"python": platform.python_version(), "versions": versions, "unsamflow_from": str(Path(
        unsamflow.__file__).parent), "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update({"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                    "capability": f"{p.major}.{p.minor}", "torch_cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version()})  # fmt: skip
    return out


# --- correlation -----------------------------------------------------------------------------------------
def _shift_loop(x1: torch.Tensor, x2: torch.Tensor, r: int = 4) -> torch.Tensor:
    """The cost volume's definition, one of the (2r+1)^2 shifts at a time."""
    _, _, h, w = x1.shape
    x2p = torch.nn.functional.pad(x2, (r, r, r, r))
    return torch.stack([(x1 * x2p[:, :, dy:dy + h, dx:dx + w]).mean(1)
                        for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)  # fmt: skip


def measure_correlation(ctx: Ctx) -> dict:
    """Forward + backward of trainer.model.correlation against the plain 81-shift loop (PWC-Lite's five
    decoder levels at 256x832, batch 8), median ms of interleaved repeats."""
    from unsamflow.trainer.model import correlation

    full = [(32, 64, 208), (64, 32, 104), (96, 16, 52), (128, 8, 26), (192, 4, 13)]  # (C, H, W), 1/4..1/64
    levels = ctx.pick(full, [(32, 16, 32)])
    batch, repeats, dev = ctx.pick(8, 1), ctx.pick(10, 1), ctx.device
    g = torch.Generator().manual_seed(0)
    rows, tot = [], {"layer": 0.0, "loop": 0.0}
    for c, h, w in levels:
        x1, x2 = (torch.randn(batch, c, h, w, generator=g).to(dev) for _ in range(2))
        grad = torch.randn(batch, 81, h, w, generator=g).to(dev)
        times: dict[str, list[float]] = {"layer": [], "loop": []}
        outs = {}
        for rep in range(repeats + 1):
            for name, fn in (("layer", lambda a, b: correlation(a, b, 4)), ("loop", _shift_loop)):
                a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
                _sync()
                t0 = time.perf_counter()
                out = fn(a, b)
                out.backward(grad)
                _sync()
                if rep:
                    times[name].append(time.perf_counter() - t0)
                outs[name] = out.detach()
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        tot = {k: tot[k] + ms[k] for k in tot}
        rows.append({"B,C,H,W": f"{batch},{c},{h},{w}", "layer_ms": ms["layer"], "loop_ms": ms["loop"],
                     "speedup": ms["loop"] / ms["layer"],
                     "max_abs_diff": float((outs["layer"] - outs["loop"]).abs().max())})  # fmt: skip
    return {"levels": rows, "layer_ms_all_levels": tot["layer"], "loop_ms_all_levels": tot["loop"],
            "speedup_all_levels": tot["loop"] / tot["layer"], "device": str(dev)}  # fmt: skip


# --- inference -------------------------------------------------------------------------------------------
def _labels(b: int, h: int, w: int, n: int = 24, seed: int = 0) -> torch.Tensor:
    """Blocky integer label maps (B, H, W): what a full segmentation looks like to the mask features."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, n, (b, 1, max(1, h // 32), max(1, w // 32)), generator=g).float()
    return torch.nn.functional.interpolate(small, size=(h, w), mode="nearest")[:, 0].long()


def measure_inference(ctx: Ctx) -> dict:
    """Frames per second of PWC-Lite with mask features (the full model), one pair at a time, forward flow
    only, at Sintel's (448x1024) and KITTI's (384x1280) test sizes, fp32 and bf16 autocast."""
    from unsamflow.trainer.model import PWCLite

    dev = ctx.device
    model = PWCLite(mask_features=True).to(dev).eval()
    sizes = ctx.pick([(448, 1024), (384, 1280)], [(64, 128)])
    warm, reps = ctx.pick(3, 0), ctx.pick(20, 1)
    rows = []
    for h, w in sizes:
        img1, img2 = torch.rand(1, 3, h, w, device=dev), torch.rand(1, 3, h, w, device=dev)
        seg1, seg2 = _labels(1, h, w).to(dev), _labels(1, h, w, seed=1).to(dev)
        for precision in ("fp32", "bf16"):
            row: dict[str, Any] = {"size": f"{h}x{w}", "precision": precision}
            if precision == "bf16" and dev.type != "cuda":
                rows.append({**row, "skipped": CUDA_ONLY})
                continue
            amp = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16"
                   else torch.autocast(dev.type, enabled=False))  # fmt: skip
            _peak_reset()
            with torch.inference_mode(), amp:
                for _ in range(warm):
                    model(img1, img2, seg1, seg2, with_bw=False)
                _sync()
                t0 = time.perf_counter()
                for _ in range(reps):
                    model(img1, img2, seg1, seg2, with_bw=False)
                _sync()
            dt = (time.perf_counter() - t0) / reps
            rows.append({**row, "ms_per_pair": 1e3 * dt, "pairs_per_s": 1 / dt, "peak_gib": _peak_gib()})
    return {"rows": rows, "device": str(dev)}


# --- the training step -----------------------------------------------------------------------------------
TRAIN_VARIANTS = {  # name -> (config overrides, torch.compile the model)
    "fp32": ([], False),
    "bf16": (["amp=bf16"], False),
    "bf16_channels_last": (["amp=bf16", "channels_last=true"], False),
    "bf16_compile": (["amp=bf16"], True),
}


def _train_config(ctx: Ctx, preset: str, root: Path, stores: Path, extra: list[str]) -> Any:
    from unsamflow.trainer.config import load_config

    crop = ctx.pick((256, 832), SMOKE_SIZE)
    over = [
        f"data.roots.synthetic={root}", f"data.masks.synthetic={stores}", "data.dataset=synthetic",
        "data.val_dataset=null", f"device={ctx.device.type}", f"data.workers={ctx.pick(6, 0)}",
        f"optim.batch_size={ctx.pick(8, 1)}", f"data.crop=[{crop[0]},{crop[1]}]", "data.resize=null",
        "optim.iterations=1000", "data.check=size", "augment.key_objects.cache_size=8",
        "logging.tensorboard=false",
    ]  # fmt: skip
    if ctx.smoke:
        over.append("augment.occlusion_crop=[64,64]")
    return load_config(preset, over + extra)


def measure_train_step(ctx: Ctx, variant: str) -> dict:
    """Seconds per step of the published configuration (kitti-aug-hg-mf in its last stage: census, spatial
    + occlusion passes, pasted key objects, homography loss; batch 8, 256x832), GPU memory peak, and the
    phases of a step (timed with a device sync at each phase's end, on separate steps)."""
    import tempfile

    from unsamflow.trainer.config import stage_starts
    from unsamflow.trainer.engine.run import build_trainer, prepare

    extra, compile_ = TRAIN_VARIANTS[variant]
    if ctx.device.type != "cuda" and variant != "fp32":
        return {"skipped": CUDA_ONLY}
    size = ctx.pick((256, 832), SMOKE_SIZE)
    root, stores = (synthetic_set(ctx, "train-step", size, sequences=3, frames=4, seed=0) if not ctx.smoke
                    else smoke_set(ctx))  # fmt: skip
    cfg = _train_config(ctx, "kitti-aug-hg-mf", root, stores, extra)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(prepare(cfg, Path(tmp) / "run"), with_hooks=False)
    trainer.iteration = stage_starts(cfg)[-1]
    out: dict[str, Any] = {"preset": "kitti-aug-hg-mf (last stage)", "batch": cfg.optim.batch_size,
                           "size": f"{size[0]}x{size[1]}", "overrides": extra}  # fmt: skip
    if compile_:
        trainer.model = torch.compile(trainer.model)
    warm, timed, phased = ctx.pick(3, 0), ctx.pick(8, 1), ctx.pick(3, 0)  # smoke: phases of the one step
    t0 = time.perf_counter()
    for _ in range(warm):  # allocations, cudnn's choices, loader workers; the compiler's graphs
        trainer.run_step()
        trainer.iteration += 1
    _sync()
    out["warmup_s"] = time.perf_counter() - t0  # with torch.compile: the compilation
    ctx.save_partial(out)
    _peak_reset()
    steps = []
    for _ in range(timed):
        t0 = time.perf_counter()
        trainer.run_step()
        trainer.iteration += 1
        _sync()
        steps.append(time.perf_counter() - t0)
    out.update({"s_per_step": statistics.median(steps), "s_per_step_min": min(steps),
                "samples_per_s": cfg.optim.batch_size / statistics.median(steps), "peak_gib": _peak_gib()})
    ctx.save_partial(out)
    trainer.timer.sync = True
    phases: list[dict[str, float]] = [] if phased else [{**trainer.step_times, "step": steps[-1]}]
    for _ in range(phased):
        t0 = time.perf_counter()
        trainer.run_step()
        trainer.iteration += 1
        phases.append({**trainer.step_times, "step": time.perf_counter() - t0})
    keys = sorted({k for p in phases for k in p})
    med = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in keys}
    step = med["step"]
    out["phases_s"] = med
    out["fraction_network"] = (med.get("forward", 0.0) + med.get("backward", 0.0)) / step
    out["fraction_homography"] = sum(v for k, v in med.items() if "homography" in k) / step
    out["fraction_loader"] = med.get("data", 0.0) / step
    out["pasted_objects"] = trainer.result is not None and trainer.result.pasted is not None
    return out


# --- SAM on the GPU ---------------------------------------------------------------------------------------
def _sam_checkpoint(ctx: Ctx, model_type: str) -> Path:
    """A checkpoint of the real architecture with random weights (written once per run)."""
    from unsamflow.pipeline.segmenters.sam import build_sam_model, write_tiny_sam_checkpoint

    path = ctx.work / f"sam-{model_type}-random.pth"
    if not path.exists():
        if model_type == "vit_tiny":
            write_tiny_sam_checkpoint(path)
        else:  # under a temporary name: a measurement stopped while saving leaves no half checkpoint
            torch.manual_seed(0)
            torch.save(build_sam_model(model_type).state_dict(), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
    return path


def _frames(ctx: Ctx) -> dict[str, list[np.ndarray]]:
    from unsamflow.pipeline.images import read_rgb

    n = ctx.pick(2, 1)
    kinds = ctx.pick(list(SAM_FRAMES), ["kitti"])  # the smoke run: one frame (SAM's cost is per 1024^2 input)
    return {k: [read_rgb(SAMPLES / f)[0] for f in SAM_FRAMES[k][:n]] for k in kinds}


def _sam_options(ctx: Ctx, model_type: str, **extra: Any) -> dict:
    opts = {"checkpoint": str(_sam_checkpoint(ctx, model_type)), "model_type": model_type,
            "device": ctx.device.type}  # fmt: skip
    if ctx.smoke:
        opts.update(points_per_side=4, points_per_batch=16)
    return {**opts, **extra}


def measure_sam(ctx: Ctx) -> dict:
    """SAM automatic mask generation, seconds per frame, on KITTI- and Sintel-sized real frames with the
    paper's generator settings (SamAutomaticMaskGenerator's defaults: 32 x 32 points, ...), ViT-B and ViT-H
    with random weights: the compute of the networks is that of the released weights, the number of masks
    that pass the quality filters (and so the post-processing time) is not. One row per model also with the
    filters off (every candidate kept): an upper bound of the post-processing."""
    from unsamflow.pipeline.segmenters import build_segmenter
    from unsamflow.pipeline.segmenters.base import SegmenterSpec

    frames = _frames(ctx)
    # most wanted first; each row starts only with time for it left (ViT-H: ~2.5 GB written and read)
    runs = ctx.pick([("vit_b", "default", 20), ("vit_h", "default", 40), ("vit_h", "off", 40),
                     ("vit_b", "off", 20)], [("vit_tiny", "default", 0)])  # fmt: skip
    rows: list[dict[str, Any]] = []
    head = {"points_per_side": ctx.pick(32, 4), "weights": "random (real architectures)"}
    for model_type, filters, needs in runs:
        row: dict[str, Any] = {"model": model_type, "filters": filters}
        if ctx.left() < needs:
            rows.append({**row, "skipped": f"{ctx.left():.0f} s left of its time"})
            continue
        extra = {} if filters == "default" else {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        try:
            t0 = time.perf_counter()
            seg = build_segmenter(SegmenterSpec("sam", _sam_options(ctx, model_type, **extra)))
            row["build_s"] = time.perf_counter() - t0
            if not ctx.smoke and filters == "default":  # warm-up: cuDNN's choices, the allocator
                seg(frames["kitti"][0])
            _sync()
            for kind, images in frames.items():
                if filters == "off":
                    images = images[:1]
                t0, masks = time.perf_counter(), 0
                for im in images:
                    masks += len(seg(im))
                _sync()
                row[f"{kind}_s_per_frame"] = (time.perf_counter() - t0) / len(images)
                row[f"{kind}_masks_per_frame"] = masks / len(images)
                row[f"{kind}_size"] = f"{images[0].shape[0]}x{images[0].shape[1]}"
            row["peak_gib"] = _peak_gib()
            del seg
        except Exception as exc:  # one model's failure (e.g. out of memory) leaves the others' rows
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(row)
        ctx.save_partial({"rows": rows, **head})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"rows": rows, **head}


def measure_pipeline(ctx: Ctx) -> dict:
    """`segment` (the stage `pipeline run` runs) over the same frames with SAM ViT-H on one GPU worker of a
    local cluster, against the segmenter alone in that worker: the pipeline's overhead (target <= 3 %)."""
    from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
    from unsamflow.pipeline.derive import DeriveConfig
    from unsamflow.pipeline.dispatch import segment_shards
    from unsamflow.pipeline.manifest import Frame, Manifest
    from unsamflow.pipeline.segmenters.base import SegmenterSpec

    model_type = ctx.pick("vit_h", "graph")  # the smoke run: tiny SAM costs seconds a frame on a CPU
    if ctx.smoke:
        spec = SegmenterSpec("graph")
    else:
        opts = _sam_options(ctx, model_type)
        opts.pop("device")  # the worker's own: cuda:0 of its pinned device
        spec = SegmenterSpec("sam", opts)
    ids = [f for v in SAM_FRAMES.values() for f in v[: ctx.pick(2, 1)]]
    manifest = Manifest("folder", str(SAMPLES), [Frame(f, f.rsplit("/", 1)[0]) for f in ids],
                        meta={"shard": 0, "num_shards": 1})  # fmt: skip
    shard = manifest.save(ctx.work / "pipeline-shards" / "shard-00000-of-00001.json")
    gpus = [0] if ctx.device.type == "cuda" else []
    t0 = time.perf_counter()
    with open_cluster(ClusterConfig(workers=1, gpus=gpus, dashboard=None)) as client:
        client.wait_for_workers(1)
        startup = time.perf_counter() - t0
        res = segment_shards([shard], ctx.work / "pipeline-stores", spec, DeriveConfig().to_dict(), client,
                             progress=False)  # fmt: skip
    if res.failed or res.bad:
        raise RuntimeError(f"segment failed: {res.summary()}")
    in_tasks = res.task_s - res.build_s  # a shard task's time includes building the segmenter once
    return {"model": model_type, "frames": res.frames, "worker": "gpu0" if gpus else "cpu0",
            "segmenter_s": res.segmenter_s, "in_task_s": in_tasks, "wall_s": res.wall_s,
            "build_s": res.build_s,
            "cluster_startup_s": startup, "overhead_pct": 100 * (in_tasks / res.segmenter_s - 1),
            "overhead_wall_pct": 100 * ((res.wall_s - res.build_s) / res.segmenter_s - 1)}  # fmt: skip


# --- a short learning run --------------------------------------------------------------------------------
def measure_learning(ctx: Ctx) -> dict:
    """A few minutes of training of the full recipe (cpu-demo's shrunk +aug +hg +mf, fp32) on synthetic
    scenes made here, sized to the time left; then held-out EPE of the model beside zero flow and DIS
    (full segmentations of the held-out frames from the weight-free segmenter). The iteration count comes
    from timing the first and the last stage's steps, so the whole schedule runs in the time given."""
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.run import prepare, train
    from unsamflow.trainer.evaluation import DISFlow, ZeroFlow, evaluate, load_network, open_segs

    size, crop, occ = ctx.pick(((320, 448), (256, 384), (192, 320)), (SMOKE_SIZE, SMOKE_SIZE, (64, 64)))
    root, stores = (synthetic_set(ctx, "learn", size, sequences=10, frames=5, seed=3) if not ctx.smoke
                    else smoke_set(ctx))  # fmt: skip
    held, _ = synthetic_set(ctx, "heldout", size, sequences=ctx.pick(3, 1), frames=ctx.pick(3, 2), seed=4,
                            masks=False)  # fmt: skip
    batch = ctx.pick(8, 1)

    def config(iterations: int):
        return load_config("cpu-demo", [
            f"data.roots.synthetic={root}", f"data.masks.synthetic={stores}", "data.val_dataset=null",
            f"device={ctx.device.type}", f"data.workers={ctx.pick(6, 0)}", f"optim.batch_size={batch}",
            f"data.crop=[{crop[0]},{crop[1]}]", f"augment.occlusion_crop=[{occ[0]},{occ[1]}]",
            f"optim.iterations={iterations}", "data.check=size", "logging.tensorboard=false",
            f"logging.every={max(1, iterations // 20)}", "logging.image_every=0", "logging.eval_every=0",
            f"logging.checkpoint_every={iterations}",
        ])  # fmt: skip

    iterations = 2 if ctx.smoke else _iterations_for(ctx, config)  # the smoke run: 2 steps, no probe
    run_dir = ctx.work / "learn-run"
    t0 = time.perf_counter()
    summary = train(prepare(config(iterations), run_dir))
    trained_s = time.perf_counter() - t0
    info = {"preset": "cpu-demo (full recipe, shrunk)", "frames": f"{size[0]}x{size[1]}",
            "crop": f"{crop[0]}x{crop[1]}", "batch": batch, "iterations": iterations, "train_s": trained_s,
            "final_losses": summary.get("losses")}  # fmt: skip
    ctx.save_partial(info)
    ds = open_dataset("synthetic", held, gt_only=True)
    segs = open_segs(None, segment=True)
    results: dict[str, Any] = {}
    panels: dict[str, np.ndarray] = {}  # the first held-out pair's picture, per predictor
    predictors = {"model": load_network(run_dir, str(ctx.device))[0], "zero": ZeroFlow(), "dis": DISFlow()}
    for name, predictor in predictors.items():

        def picture(sample: dict, flow: np.ndarray, _refined: Any, name: str = name) -> None:
            if name != "zero" and name not in panels:
                from unsamflow.pipeline.flow import flow_panel

                panels[name] = flow_panel(sample["img1"], sample["img2"], flow, sample["flow"],
                                          sample["valid"], annotate=True)  # fmt: skip

        r = evaluate(predictor, ds, "synthetic", segs=segs, on_flow=picture)
        results[name] = {k: r.metrics[k] for k in ("epe", "flall") if k in r.metrics} | {
            "pairs": len(r.pairs)}
        ctx.save_partial({**info, "heldout": results})
    if panels:  # model over DIS on the first held-out pair
        from unsamflow.pipeline.images import write_png

        width = max(p.shape[1] for p in panels.values())
        rows = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255)
                for p in panels.values()]  # fmt: skip
        png = write_png(ctx.out / "learning.png", np.concatenate(rows, 0))
        results["picture"] = f"{png.name}: the first held-out pair, {' over '.join(panels)}"
    return {**info, "heldout": results}


def _iterations_for(ctx: Ctx, config: Any) -> int:
    """Iterations that fill the time left (less 40 s for the evaluation), from the step times of the
    cheapest (first) and the dearest (last) stage; stages start at 0, 25 and 75 % of the iterations."""
    import tempfile

    from unsamflow.trainer.config import stage_starts
    from unsamflow.trainer.engine.run import build_trainer, prepare

    probe_cfg = config(1000)
    with tempfile.TemporaryDirectory() as tmp:
        probe = build_trainer(prepare(probe_cfg, Path(tmp) / "run"), with_hooks=False)
    first: list[float] = []
    last: list[float] = []
    for it, bucket in ((0, first), (stage_starts(probe_cfg)[-1], last)):
        probe.iteration = it
        for i in range(ctx.pick(5, 1)):
            t0 = time.perf_counter()
            probe.run_step()
            probe.iteration += 1
            _sync()
            if i or ctx.smoke:  # the first step of each stage warms up
                bucket.append(time.perf_counter() - t0)
    del probe
    step_s = 0.25 * statistics.median(first) + 0.75 * statistics.median(last)
    train_s = ctx.pick(min(210.0, max(30.0, ctx.left() - 40)), 0.0)  # 40 s: saving and the evaluation
    return max(ctx.pick(20, 2), int(train_s / step_s))


MEASURES: dict[str, tuple[str, float, Any]] = {
    # name -> (title, planned seconds on an H200, function(ctx) -> figures); run in this order
    "env": ("versions and device", 30, measure_env),
    "correlation": ("correlation layer vs 81-shift loop, fwd+bwd", 30, measure_correlation),
    "inference": ("inference pairs/s at 448x1024 and 384x1280", 45, measure_inference),
    "train_fp32": ("training step, fp32", 75, lambda c: measure_train_step(c, "fp32")),
    "train_bf16": ("training step, bf16 autocast", 40, lambda c: measure_train_step(c, "bf16")),
    "train_bf16_channels_last": ("training step, bf16 + channels_last", 40,
                                 lambda c: measure_train_step(c, "bf16_channels_last")),
    "sam": ("SAM ViT-B / ViT-H automatic mask generation", 90, measure_sam),
    "pipeline": ("segment on 1 GPU worker vs the segmenter alone", 60, measure_pipeline),
    "learning": ("short learning run, held-out EPE vs zero and DIS", 300, measure_learning),
    "train_bf16_compile": ("training step, bf16 + torch.compile", 75,
                           lambda c: measure_train_step(c, "bf16_compile")),
}
# Seconds kept for a measurement while the ones before it run (on a GPU run): the learning run needs its
# data, a probe, ~1.5 minutes of training at least and the evaluation; torch.compile gets a minute to try.
RESERVE_S = {"learning": 150.0, "train_bf16_compile": 60.0}
# The measurement that takes whatever is left (less the reserves of those after it).
OPEN_ENDED = "learning"


def run_one(name: str, ctx: Ctx, result: Path) -> None:
    """Run measurement `name` and write {"figures": ...} or {"error": ...} to `result`."""
    import traceback

    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes throughout: let cuDNN pick its kernels

    t0 = time.perf_counter()
    try:
        doc: dict[str, Any] = {"figures": MEASURES[name][2](ctx)}
    except BaseException as exc:  # recorded, never raised: the next measurement runs regardless
        doc = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
    doc["seconds"] = time.perf_counter() - t0
    result.write_text(json.dumps(doc, indent=1, default=str))
