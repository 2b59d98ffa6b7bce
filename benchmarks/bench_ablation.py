"""Ablation of the method's three parts (+aug key-object augmentation, +hg homography smoothness, +mf mask
features) under one budget: the same data, seeds and iterations for every variant.

Default (CPU, one torch thread, ~30 min on 2 busy cores): synthetic scenes at reduced resolution (128x160
frames, 64x128 crops, 100 iterations), masks from the default segmenter (`pipeline run`, as `make demo`),
the cpu-demo recipe with the variant's parts switched off by config overrides, 3 seeds per variant,
trained one after another in this process. Each trained network is scored on held-out synthetic pairs
(EPE all / non-occluded / occluded / within 3 px of an object boundary of the exact instance maps) and
on the real samples (tests/data:
Sintel clean alley_1, KITTI 2015 000000, Middlebury Venus; with --shared-real also every colour pair
with GT in ../shared/data). Writes benchmarks/results/ablation.{json,md}, adding each finished run to the
JSON as it goes (a killed run keeps what finished; --resume skips the runs already in it).

Full resolution on a GPU (the reference recipe and crops, on real training data; --name keeps the CPU
table):
    python -m benchmarks.bench_ablation --preset-family kitti --device cuda --threads 8 \
        --iterations 200000 --data /data/KITTI2015 --masks /data/kitti_masks/stores --seeds 0,1,2 \
        --size 256x832 --shared-real --name ablation_kitti
(--size sets the held-out synthetic frames there; without --data a kitti/sintel family trains on the
synthetic set, which then needs frames at least as large as the preset's crop.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, machine, write_results

REPO = Path(__file__).resolve().parents[1]

# The parts each variant keeps. Off means the base recipe's value: no key-object augmentation and the
# base's augmentation-regularisation weight (w_ar 0.02; the presets raise it to 0.1 with +aug), no
# homography loss, no mask-feature module. Stage 2 (from 75 % of the iterations) is where +aug/+hg act.
VARIANTS: dict[str, tuple[bool, bool, bool]] = {  # name: (aug, hg, mf)
    "base": (False, False, False),
    "+aug": (True, False, False),
    "+hg": (False, True, False),
    "+mf": (False, False, True),
    "+aug+hg": (True, True, False),
    "all (+aug+hg+mf)": (True, True, True),
}
FAMILY_PRESET = {"cpu-demo": "cpu-demo", "kitti": "kitti-aug-hg-mf", "sintel": "sintel-aug-hg-mf"}
METRICS = ("epe_all", "epe_noc", "epe_occ", "epe_boundary")


def variant_overrides(aug: bool, hg: bool, mf: bool, w_hg: float = 0.1) -> list[str]:
    """Config overrides turning the full recipe (+aug +hg +mf) into one variant."""
    return [f"model.mask_features={str(mf).lower()}", f"stages.2.key_aug={str(aug).lower()}",
            f"stages.2.w_ar={0.1 if aug else 0.02}", f"stages.2.w_hg={w_hg if hg else 0.0}"]  # fmt: skip


def run_cli(*args: str) -> None:
    """A pipeline stage as the user runs it (idempotent: a finished folder is skipped)."""
    cmd = [sys.executable, "-m", "unsamflow.pipeline", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def make_synthetic(
    work: Path, size: str, train_seqs: int, heldout_seqs: int, key_min: int
) -> dict[str, Path]:
    """Training and held-out synthetic sets with their mask stores (default segmenter, 2 local workers)."""
    out = {}
    for name, seqs, frames, seed in (("data", train_seqs, 4, 0), ("heldout", heldout_seqs, 3, 1)):
        root, masks = work / name, work / f"{name}_masks"
        run_cli("synth", "--out", str(root), "--sequences", str(seqs), "--frames", str(frames),
                "--size", size, "--seed", str(seed), "--difficulty", "easy")  # fmt: skip
        if not (masks / "stores" / "index.json").exists():
            run_cli("run", "--manifest", str(root / "manifest.json"), "--out", str(masks), "--shards", "2",
                    "--workers", "2", "--pictures", "0", "--key-min-h", str(key_min), "--key-min-w",
                    str(key_min), "--key-min-overlaps", "3")  # fmt: skip
        out[name], out[f"{name}_masks"] = root, masks / "stores"
    return out


def boundary_band(inst: np.ndarray, radius: float = 3.0) -> np.ndarray:
    """Pixels within `radius` px of an instance boundary (where the instance id changes)."""
    import cv2

    edge = np.zeros(inst.shape, bool)
    dy, dx = inst[1:] != inst[:-1], inst[:, 1:] != inst[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    if not edge.any():
        return edge
    dist = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)
    return dist <= radius


class Sums:
    """Pooled EPE sums per pixel class (all / noc / occ / boundary)."""

    def __init__(self) -> None:
        self.s = dict.fromkeys(METRICS, 0.0)
        self.n = dict.fromkeys(METRICS, 0)

    def add(self, err: np.ndarray, masks: dict[str, np.ndarray]) -> None:
        for k, m in masks.items():
            self.s[k] += float(err[m].sum())
            self.n[k] += int(m.sum())

    def result(self) -> dict[str, float]:
        return {k: self.s[k] / self.n[k] for k in METRICS if self.n[k]}


class Heldout:
    """The held-out synthetic pairs, read once, with their classes of pixels and full segmentations."""

    def __init__(self, root: Path, stores: Path):
        from unsamflow.pipeline.flow import open_dataset
        from unsamflow.trainer.evaluation import StoreSegs

        ds = open_dataset("synthetic", root, gt_only=True)
        segs = StoreSegs(stores)
        self.samples = []
        for i in range(len(ds)):
            s = ds[i]
            valid, occ = s["valid"].astype(bool), s["occ"].astype(bool)
            masks = {"epe_all": valid, "epe_noc": valid & ~occ, "epe_occ": valid & occ,
                     "epe_boundary": valid & boundary_band(s["inst1"])}  # fmt: skip
            seg1, seg2 = segs(s["frame1"], s["img1"]), segs(s["frame2"], s["img2"])
            self.samples.append((s["img1"], s["img2"], seg1, seg2, s["flow"], masks))
        segs.close()

    def score(self, predictor) -> dict[str, float]:
        sums = Sums()
        for img1, img2, seg1, seg2, gt, masks in self.samples:
            flow = predictor(img1, img2, seg1, seg2)
            sums.add(np.linalg.norm(flow - gt, axis=2), masks)
        return sums.result()


class RealPairs:
    """Real pairs with GT: the shipped samples (tests/data) and, when present, ../shared/data's colour pairs
    (as bench_refine_real reads them). Full segmentations from the default segmenter, made once."""

    SHIPPED = (("sintel alley_1", "sintel-clean-training", "sintel"),
               ("kitti15 000000", "kitti-2015-training", "kitti2015"),
               ("middlebury Venus", "middlebury-other", "middlebury"))  # fmt: skip

    def __init__(self, shared: bool = True):
        from unsamflow.pipeline.flow import open_dataset
        from unsamflow.trainer.evaluation import SegmenterSegs

        segs = SegmenterSegs(cache=2)
        self.shipped, self.shared = [], []
        for label, name, folder in self.SHIPPED:
            root = REPO / "tests" / "data" / folder
            if not root.is_dir():
                continue
            s = open_dataset(name, root, gt_only=True)[0]
            s1, s2 = segs(s["frame1"], s["img1"]), segs(s["frame2"], s["img2"])
            self.shipped.append((label, s["img1"], s["img2"], s1, s2, s["flow"], s["valid"].astype(bool)))
        if shared:
            from unsamflow.pipeline.images import read_rgb

            from benchmarks import bench_refine_real as brr

            if brr.DATA.is_dir():
                for p in brr.pairs():
                    if not all(f.exists() for f in p["frames"]):
                        continue
                    im1, im2 = (read_rgb(f)[0] for f in p["frames"])
                    gt, valid = brr.read_gt(p)
                    self.shared.append((p["pair"], im1, im2, segs(str(p["frames"][0]), im1),
                                        segs(str(p["frames"][1]), im2), gt, valid))  # fmt: skip
        segs.close()

    def score(self, predictor) -> dict[str, float]:
        out = {}
        for label, im1, im2, s1, s2, gt, valid in self.shipped:
            out[label] = _epe(predictor(im1, im2, s1, s2), gt, valid)
        if self.shared:
            errs = [_epe(predictor(im1, im2, s1, s2), gt, valid)
                    for _, im1, im2, s1, s2, gt, valid in self.shared]  # fmt: skip
            out[f"real-{len(errs)} mean"] = float(np.mean(errs))
            out[f"real-{len(errs)} median"] = float(np.median(errs))
        return out


def _epe(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    return float(np.linalg.norm(flow - gt, axis=2)[valid].mean())


def train_one(preset: str, overrides: list[str], device: str) -> tuple[torch.nn.Module, float]:
    """Train one variant in this process (no files written) and return its network and seconds."""
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.run import build_trainer, prepare

    cfg = load_config(preset, overrides)
    p = prepare(cfg, REPO / "build" / "ablation-unused-run-dir")  # nothing is written there (no hooks)
    trainer = build_trainer(p, with_hooks=False)
    t0 = time.perf_counter()
    trainer.train()
    return getattr(trainer.model, "module", trainer.model), time.perf_counter() - t0


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    """One row per variant: mean ± std over seeds of every metric."""
    rows = []
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        if not mine:
            continue
        keys = [k for k in mine[0]["metrics"]]
        row: dict[str, Any] = {"variant": v, "seeds": len(mine)}
        for k in keys:
            vals = np.array([r["metrics"][k] for r in mine if k in r["metrics"]])
            row[k] = f"{vals.mean():.3f} ± {vals.std(ddof=1) if len(vals) > 1 else 0.0:.3f}"
        row["train s/run"] = f"{np.mean([r['train_seconds'] for r in mine]):.0f}"
        rows.append(row)
    return rows


def zero_row(setup: dict) -> list[dict]:
    """The zero-flow reference (what a network that learned nothing scores), when recorded."""
    z = setup.get("zero_flow")
    if not z:
        return []
    return [{"variant": "zero flow (reference)", "seeds": "-", **{k: f"{v:.3f}" for k, v in z.items()}}]


def write_table(name: str, variants: list[str]) -> None:
    """The Markdown table from the results JSON alone, saying how many seeds each variant has."""
    doc = json.loads((RESULTS / f"{name}.json").read_text())
    runs, setup = doc["runs"], doc["setup"]
    seeds = sorted({r["seed"] for r in runs})
    complete = all(len([r for r in runs if r["variant"] == v]) == len(setup["seeds"]) for v in variants)
    notes = (doc.get("notes") or "") if complete else (
        f"PARTIAL: the run was cut short; finished runs only (seeds {seeds}; see the seeds column). Preset "
        f"{setup['preset']}, {setup['iterations']} iterations, crops {setup['crop']} of {setup['size']} "
        f"synthetic frames, {setup['threads']} torch thread(s). Values: mean ± sample std over the seeds "
        "that finished. Held-out EPE pooled over the pixels of "
        f"{setup['heldout_pairs']} synthetic pairs; real: EPE of {', '.join(setup['real_shipped'])}.")
    rows = summarise(runs, variants) + zero_row(setup)
    md = write_results(name, rows, notes)
    doc.update(rows=rows, notes=notes)  # write_results replaced the JSON: keep the runs in it
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1))
    print(md.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset-family", choices=sorted(FAMILY_PRESET), default="cpu-demo")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    ap.add_argument("--size", default="128x160", help="synthetic frame size (cpu-demo family)")
    ap.add_argument("--crop", default="64x128", help="training crop HxW (cpu-demo family; kitti/sintel keep "
                    "their preset's)")  # fmt: skip
    ap.add_argument("--train-sequences", type=int, default=8)
    ap.add_argument("--heldout-sequences", type=int, default=4)
    ap.add_argument("--data", help="training data root (kitti/sintel family; default: the synthetic set)")
    ap.add_argument("--masks", help="mask stores of --data")
    ap.add_argument("--work", default=str(REPO / "build" / "ablation"), help="folder for data and masks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (2 ran ~8x slower than 1 on this busy 2-core machine)")  # fmt: skip
    ap.add_argument("--shared-real", action="store_true", help="also score ../shared/data's 14 real pairs "
                    "(full size: ~30-100 s per run on 2 cores, so off by default)")  # fmt: skip
    ap.add_argument("--name", default="ablation", help="results name (benchmarks/results/NAME.md|json)")
    ap.add_argument("--resume", action="store_true", help="skip the runs already in the results JSON")
    ap.add_argument("--table-only", action="store_true",
                    help="write the table from the runs already in the results JSON (e.g. a cut-short run)")
    ap.add_argument("overrides", nargs="*", help="extra key=value config overrides for every run")
    argv = [] if argv is None else argv  # run_all calls main(): the defaults, not run_all's own arguments
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    variants = [v for v in a.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if a.table_only:
        write_table(a.name, variants)
        return
    work = Path(a.work)
    from unsamflow.trainer.evaluation import ZeroFlow
    t_start = time.perf_counter()
    sets = make_synthetic(work, a.size, a.train_sequences, a.heldout_sequences,
                          key_min=max(8, int(a.size.split("x")[0]) // 8))  # fmt: skip
    preset = FAMILY_PRESET[a.preset_family]
    common = [f"device={a.device}", "data.val_dataset=null", "logging.tensorboard=false",
              f"optim.iterations={a.iterations}"]  # fmt: skip
    if a.preset_family == "cpu-demo":
        common += ["data.workers=0"]  # a loader process only competes for the 2 cores
        h, w = (int(x) for x in a.crop.split("x"))
        common += [f"data.crop=[{h},{w}]", f"augment.occlusion_crop=[{min(64, h)},{min(128, w)}]"]
    data = a.data or str(sets["data"])
    masks = a.masks or str(sets["data_masks"])
    family_data = [f"data.roots={data}", f"data.masks={masks}"]
    if a.preset_family != "cpu-demo" and a.data is None:
        family_data += ["data.dataset=synthetic"]
    heldout = Heldout(sets["heldout"], sets["heldout_masks"])
    real = RealPairs(shared=a.shared_real)
    zero = ZeroFlow()
    zero_flow = {**heldout.score(zero), **real.score(zero)}
    print(f"data ready in {time.perf_counter() - t_start:.0f} s: {len(heldout.samples)} held-out pairs, "
          f"{len(real.shipped)} shipped + {len(real.shared)} shared real pairs", flush=True)

    json_path = RESULTS / f"{a.name}.json"
    runs: list[dict] = []
    if a.resume and json_path.exists():
        runs = json.loads(json_path.read_text()).get("runs", [])
    done = {(r["variant"], r["seed"]) for r in runs}
    from unsamflow.trainer.evaluation import NetworkPredictor

    setup = {"preset": preset, "iterations": a.iterations, "seeds": seeds, "size": a.size, "crop": a.crop,
             "device": a.device, "threads": a.threads, "common_overrides": common + a.overrides,
             "train_pairs_root": data, "heldout_pairs": len(heldout.samples),
             "real_shipped": [r[0] for r in real.shipped],
             "real_shared": [r[0] for r in real.shared], "zero_flow": zero_flow}  # fmt: skip
    for seed in seeds:  # seed-major: a cut-short run still has every variant at the first seeds
        for v in variants:
            if (v, seed) in done:
                continue
            ov = family_data + common + variant_overrides(*VARIANTS[v]) + [f"seed={seed}"] + a.overrides
            net, secs = train_one(preset, ov, a.device)
            t0 = time.perf_counter()
            pred = NetworkPredictor(net, a.device)
            metrics = {**heldout.score(pred), **real.score(pred)}
            runs.append({"variant": v, "seed": seed, "overrides": ov, "train_seconds": secs,
                         "eval_seconds": time.perf_counter() - t0, "metrics": metrics})  # fmt: skip
            print(f"{v} seed {seed}: train {secs:.0f} s, " +
                  ", ".join(f"{k} {x:.3f}" for k, x in metrics.items()), flush=True)  # fmt: skip
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps({"benchmark": a.name, "machine": machine(), "setup": setup,
                                             "runs": runs}, indent=1))  # fmt: skip
    rows = summarise(runs, variants) + zero_row(setup)
    wall = time.perf_counter() - t_start
    notes = (
        f"Command: `python -m benchmarks.bench_ablation {' '.join(argv)}`"
        f" ({wall / 60:.0f} min wall here, {a.threads} torch threads). Preset {preset} with the variant's "
        f"parts switched off (base: no key-object augmentation and stage-2 w_ar 0.02, w_hg 0, no mask "
        f"features); "
        f"{a.iterations} iterations, crops {a.crop} of {a.size} synthetic frames ({a.train_sequences} "
        f"sequences x 4 frames, masks from the default segmenter), seeds {seeds}. Values: mean ± std "
        f"over seeds (sample std). Held-out: {len(heldout.samples)} synthetic pairs, EPE pooled over pixels: "
        "all, non-occluded, occluded, and within 3 px of an instance boundary (exact instance maps). Real: "
        "EPE of the shipped samples (native size, padded)" + (
        ", and the mean / median over the colour pairs of ../shared/data with GT." if real.shared else ".")
    )
    md = write_results(a.name, rows, notes)
    doc = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**doc, "setup": setup, "runs": runs, "rows": rows, "notes": notes},
                                    indent=1))  # fmt: skip
    print(md.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
