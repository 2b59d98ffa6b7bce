"""Augmentation cost: one full second-pass augmentation of a batch (appearance + spatial + occlusion
crop + key-object paste from a full cache), KITTI-sized, on CPU with 2 threads.

The target is <= 10 % of a training step. Run: .venv/bin/python -m benchmarks.bench_augment
"""

from __future__ import annotations

import os
import statistics
import time

import torch
from unsamflow.trainer.augment import (
    CROP_PRESETS,
    SPATIAL_PRESETS,
    AppearanceConfig,
    AugmentedPair,
    KeyObjectCache,
    appearance,
    occlusion_crop,
    spatial_pass,
)

from benchmarks.common import write_results


def _batch(b: int, h: int, w: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    img = torch.rand(b, 3, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.zeros(b, 4, h, w, dtype=torch.bool)
    for k in range(4):  # four 80 x 120 boxes per frame
        y0, x0 = 20 + 40 * (k % 3), 50 + 180 * k
        masks[:, k] = (yy >= y0) & (yy < y0 + 80) & (xx >= x0) & (xx < x0 + 120)
    return {
        "img1": img,
        "img2": img.roll(3, -1),
        "flow": torch.randn(b, 2, h, w, generator=g) * 3,
        "noc": torch.rand(b, 1, h, w, generator=g) > 0.1,
        "seg": torch.randint(0, 40, (b, h, w), generator=g),
        "key_masks": masks,
        "key_count": torch.full((b,), 4),
    }


def augment_step(
    d: dict, cache: KeyObjectCache, g: torch.Generator, crop: tuple[int, int]
) -> tuple[AugmentedPair, AugmentedPair]:
    """What the engine does per step: appearance, spatial pass, occlusion pass with paste, cache push."""
    img1, img2 = appearance(d["img1"], d["img2"], AppearanceConfig(), g)
    sp = spatial_pass(img1, img2, d["flow"], d["noc"], d["seg"], d["seg"], SPATIAL_PRESETS["kitti"], g)
    pair = AugmentedPair.build(img1, img2, d["flow"], d["noc"], d["seg"], d["seg"])
    occ = occlusion_crop(cache.paste(pair, g), crop, g)
    cache.push(img1, d["key_masks"], d["key_count"], d["flow"], g)
    return sp, occ


def benchmark_augment(batch: int = 8, size: tuple[int, int] = (256, 832), repeats: int = 5) -> float:
    """Median ms per batch of the full augmentation (cache full), 2 CPU threads; writes results/augment."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        d = _batch(batch, *size, g)
        cache = KeyObjectCache(100)
        while not cache.full:
            cache.push(d["img1"], d["key_masks"], d["key_count"], d["flow"], g)
        crop = CROP_PRESETS["kitti"] if size == (256, 832) else (size[0] * 3 // 4, size[1] * 3 // 4)
        times, parts = [], {"appearance": [], "spatial": [], "paste": [], "crop": [], "push": []}
        for rep in range(repeats + 1):  # the first round warms up
            t0 = time.perf_counter()
            augment_step(d, cache, g, crop)
            dt = time.perf_counter() - t0
            marks = _parts(d, cache, g, crop)
            if rep:
                times.append(dt)
                for k, v in marks.items():
                    parts[k].append(v)
        ms = 1e3 * statistics.median(times)
        row = {"batch": batch, "size": f"{size[0]}x{size[1]}", "threads": 2, "total_ms": ms}
        row.update({f"{k}_ms": 1e3 * statistics.median(v) for k, v in parts.items()})
        notes = (
            f"Full second-pass augmentation per batch on CPU (median of {repeats}): appearance, spatial "
            f"pass (KITTI values, noise on), paste of 3 objects per sample from a full cache of 100, crop "
            f"{crop[0]}x{crop[1]}, push; the parts are timed separately. Load average at the end: "
            f"{os.getloadavg()[0]:.1f} (shared machine: absolute times vary with load)."
        )
        write_results("augment", [row], notes=notes)
        return ms
    finally:
        torch.set_num_threads(threads)


def _parts(d: dict, cache: KeyObjectCache, g: torch.Generator, crop: tuple[int, int]) -> dict[str, float]:
    """The same step timed piece by piece (to see where the time goes)."""
    out, t = {}, time.perf_counter()
    img1, img2 = appearance(d["img1"], d["img2"], AppearanceConfig(), g)
    out["appearance"], t = time.perf_counter() - t, time.perf_counter()
    spatial_pass(img1, img2, d["flow"], d["noc"], d["seg"], d["seg"], SPATIAL_PRESETS["kitti"], g)
    out["spatial"], t = time.perf_counter() - t, time.perf_counter()
    pasted = cache.paste(AugmentedPair.build(img1, img2, d["flow"], d["noc"], d["seg"], d["seg"]), g)
    out["paste"], t = time.perf_counter() - t, time.perf_counter()
    occlusion_crop(pasted, crop, g)
    out["crop"], t = time.perf_counter() - t, time.perf_counter()
    cache.push(img1, d["key_masks"], d["key_count"], d["flow"], g)
    out["push"] = time.perf_counter() - t
    return out


if __name__ == "__main__":
    print(f"augment: {benchmark_augment():.1f} ms per batch")
    print((__import__("benchmarks.common").common.RESULTS / "augment.md").read_text())
