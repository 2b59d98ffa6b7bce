"""Does the trainer learn flow? Supervised ceiling, the unsupervised recipe, real pairs, and the parts.

`make learning` (CPU, <= 60 min on 2 cores at the defaults; `--parts` runs a subset, `--work` keeps the
data and runs between calls). Parts, in order:

1. data: synthetic training scenes (96 sequences x 3 frames) and held-out scenes (8 x 2, other seeds) at
   192 x 256 (`pipeline synth --difficulty medium`: a textured background under a camera homography,
   3-5 rigid textured objects under their own homographies or affine motions, occlusions at their
   borders, lighting change and noise), masks by `pipeline run` with the weight-free `graph` segmenter
   as a user makes them; masks of the real Sintel samples for the adaptation run.
2. baselines: zero flow and OpenCV DIS on the held-out pairs.
3. supervised: the same network (PWC-Lite, PyTorch default init) trained on the ground truth (multi-level
   EPE) with the same iterations, batch, optimiser and schedule: the ceiling at this budget.
4. unsupervised: `train --preset cpu-small` (the full recipe, reference stages and weights), a
   checkpoint every K iterations, each evaluated on the held-out pairs (EPE all / noc / occ).
5. real: the final unsupervised checkpoint on every real sample with ground truth (tests/data,
   ../shared/data), and a self-supervised adaptation run on the real Sintel frames themselves (their
   ground truth is never read in training: an unsupervised loss may train on the evaluation frames),
   scored before and after on those frames.
6. ablation (`make ablation`, `--parts ablation`; not in the default parts, it needs another hour):
   base, +hg, +aug, +aug+hg+mf, 3 seeds each, `--ablation-iterations` each (default 300), `--jobs` runs
   at a time (default 2: one per core), gated on step 4 having learned.

Writes benchmarks/results/learning.{json,md} and learning.png (held-out EPE against iterations). The
JSON's headline figures: unsup_heldout_epe_vs_zero, sup_heldout_epe_vs_zero, real_adapt_epe_vs_zero,
wall_minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, write_results

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNSAMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
SIZE = (192, 256)
PRESET = "cpu-small"
PARTS = ("data", "baselines", "supervised", "unsupervised", "real", "ablation")
# `make learning` (<= 60 min on 2 cores): all but the ablation, which is `make ablation` (~65 min more).
DEFAULT_PARTS = PARTS[:-1]
# The parts each ablation variant keeps: (key-object augmentation, homography loss, mask features).
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "base": (False, False, False),
    "+hg": (False, True, False),
    "+aug": (True, False, False),
    "+aug+hg+mf": (True, True, True),
}
KEY_THRESHOLDS = ["--key-min-h", "24", "--key-min-w", "24", "--key-min-overlaps", "3"]
# One math thread per training process, two processes at once: on 2 cores two single-threaded runs
# train more per minute than one run on two threads (small convolutions scale poorly, and idle OpenMP
# threads spin).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LEARNED = 0.8  # held-out EPE / zero flow at or below which the unsupervised run counts as having learned


def run(cmd: list[str], log: Path | None = None) -> None:
    """A project command in a subprocess (as a user runs it); its output goes to `log`."""
    full = [sys.executable, "-m", *cmd]
    with open(log, "a") if log else open(os.devnull, "w") as out:
        proc = subprocess.run(full, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}" + (f"; see {log}" if log else ""))


# --- 1. data ------------------------------------------------------------------------------------------


def real_sintel_root() -> Path:
    return SHARED / "sintel" if (SHARED / "sintel").is_dir() else REPO / "tests" / "data" / "sintel"


def make_data(work: Path, log: Path) -> None:
    h, w = SIZE
    # Many short sequences: 8 sequences of 6 frames were memorised (their 8 background motions) and the
    # held-out error rose above zero flow; 96 x 3 gives 192 pairs with 96 camera motions.
    for name, seqs, frames, seed in (("train", 96, 3, 0), ("heldout", 8, 2, 1000)):
        if not (work / name / "manifest.json").is_file():
            run(["unsamflow.pipeline", "synth", "--out", str(work / name), "--sequences", str(seqs),
                 "--frames", str(frames), "--size", f"{h}x{w}", "--seed", str(seed), "--difficulty", "medium",
                 "-q"], log)  # fmt: skip
        run(["unsamflow.pipeline", "run", "--manifest", str(work / name / "manifest.json"), "--out",
             str(work / f"{name}_masks"), "--shards", "2", "--workers", "2", "--pictures", "0", "-q",
             *KEY_THRESHOLDS], log)  # fmt: skip
    run(["unsamflow.pipeline", "run", "--layout", "sintel", "--root", str(real_sintel_root()), "--out",
         str(work / "real_masks"), "--shards", "2", "--workers", "2", "--pictures", "0", "--allow-partial",
         "-q", *KEY_THRESHOLDS], log)  # fmt: skip


# --- evaluation helpers ------------------------------------------------------------------------------


def heldout(work: Path):
    from unsamflow.pipeline.flow.datasets import open_dataset

    return open_dataset("synthetic", work / "heldout")


def score(predictor, dataset, name: str, segs=None) -> dict[str, float]:
    from unsamflow.trainer.evaluation import evaluate

    m = evaluate(predictor, dataset, name, segs=segs).metrics
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def score_checkpoint(ckpt: Path, work: Path) -> dict[str, float]:
    from unsamflow.trainer.evaluation import load_network
    from unsamflow.trainer.evaluation.segs import StoreSegs

    predictor, _ = load_network(ckpt, "cpu")
    segs = StoreSegs(work / "heldout_masks" / "stores") if predictor.needs_segs else None
    return score(predictor, heldout(work), "synthetic", segs)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = sorted(run_dir.glob("checkpoints/ckpt_*.pt"))
    return [(int(p.stem.split("_")[1]), p) for p in found]


# --- 3. supervised ceiling ---------------------------------------------------------------------------


def train_supervised(work: Path, iterations: int, batch: int, seed: int, every: int) -> list[dict[str, Any]]:
    """PWC-Lite trained on the ground truth with the preset's optimiser and schedule; held-out curve."""
    from unsamflow.pipeline.flow.datasets import open_dataset
    from unsamflow.trainer.config import load_config
    from unsamflow.trainer.engine.run import build_optimizer
    from unsamflow.trainer.evaluation.predictors import NetworkPredictor
    from unsamflow.trainer.model import PWCLite

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = load_config(PRESET, [f"optim.iterations={iterations}", f"optim.batch_size={batch}"])

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()

    pairs = [(chw(s["img1"]) / 255, chw(s["img2"]) / 255, chw(s["flow"]))
             for s in open_dataset("synthetic", work / "train")]  # fmt: skip
    model = PWCLite(normalize_corr_features=cfg.model.normalize_corr_features)  # no masks: no +mf
    opt, sched = build_optimizer(cfg, model)
    curve = []
    test = heldout(work)
    for it in range(1, iterations + 1):
        idx = rng.integers(len(pairs), size=batch)
        img1, img2, flow = (torch.stack([pairs[i][k] for i in idx]) for k in range(3))
        if rng.random() < 0.5:  # the loader's horizontal flip
            mirror = torch.tensor([-1.0, 1.0])[:, None, None]
            img1, img2, flow = img1.flip(-1), img2.flip(-1), flow.flip(-1) * mirror
        out = model(img1, img2, with_bw=False)["flows_fw"]
        loss = img1.new_zeros(())
        for level, (pred, weight) in enumerate(zip(out, (1.0, 1.0, 1.0, 1.0, 0.0), strict=False)):
            if weight:
                gt = F.interpolate(flow, size=pred.shape[-2:], mode="area") / 2**level
                loss = loss + weight * (pred - gt).norm(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        opt.step()
        sched.step()
        if it % every == 0 or it == iterations:
            model.eval()
            curve.append({"iteration": it, **score(NetworkPredictor(model, device="cpu"), test, "synthetic")})
            model.train()
            print(f"supervised {it}/{iterations}: held-out EPE {curve[-1]['epe']:.3f}", flush=True)
    return curve


# --- 4. unsupervised -----------------------------------------------------------------------------------


def variant_overrides(aug: bool, hg: bool, mf: bool) -> list[str]:
    return [f"model.mask_features={str(mf).lower()}", f"stages.2.key_aug={str(aug).lower()}",
            f"stages.2.w_ar={0.1 if aug else 0.02}", f"stages.2.w_hg={0.1 if hg else 0.0}"]  # fmt: skip


def train_unsupervised(work: Path, out: Path, iterations: int, seed: int, every: int, extra: list[str],
                       log: Path) -> Path:  # fmt: skip
    if not checkpoints(out) or checkpoints(out)[-1][0] < iterations:
        resume = ["--resume"] if (out / "checkpoints").is_dir() else []
        run(["unsamflow.trainer", "train", "--preset", PRESET, "--out", str(out), *resume,
             f"data.roots={work / 'train'}", f"data.masks={work / 'train_masks' / 'stores'}",
             f"optim.iterations={iterations}", f"logging.checkpoint_every={every}", f"seed={seed}", *extra],
            log)  # fmt: skip
    return out


def curve_of(run_dir: Path, work: Path) -> list[dict[str, Any]]:
    return [{"iteration": it, **score_checkpoint(p, work)} for it, p in checkpoints(run_dir)]


# --- 5. real pairs ------------------------------------------------------------------------------------


def real_sets() -> list[tuple[str, str, Path]]:
    """(label, dataset name, root) of every real sample with ground truth this clone has."""
    out = []
    for base in (REPO / "tests" / "data", SHARED):
        if not base.is_dir():
            continue
        tag = "tests/data" if base == REPO / "tests" / "data" else "shared/data"
        for label, name, sub in (("Sintel clean", "sintel-clean-training", "sintel"),
                                 ("Sintel final", "sintel-final-training", "sintel"),
                                 ("KITTI 2015", "kitti-2015", "kitti2015"),
                                 ("KITTI 2012", "kitti-2012", "kitti2012"),
                                 ("Middlebury", "middlebury", "middlebury"),
                                 ("FlyingChairs", "flyingchairs", "flyingchairs")):  # fmt: skip
            if (base / sub).is_dir():
                out.append((f"{label} ({tag})", name, base / sub))
    return out


def score_real(predictor, segs=None) -> list[dict[str, Any]]:
    from unsamflow.pipeline.flow.datasets import open_dataset
    from unsamflow.trainer.evaluation.predictors import ZeroFlow

    rows = []
    for label, name, root in real_sets():
        try:
            ds = open_dataset(name, root, gt_only=True)
        except Exception as exc:  # a layout this clone's sample does not fill: say so, go on
            rows.append({"set": label, "error": str(exc)[:120]})
            continue
        if not len(ds):
            continue
        rows.append({"set": label, "pairs": len(ds), "model_epe": score(predictor, ds, name, segs)["epe"],
                     "zero_epe": score(ZeroFlow(), ds, name)["epe"]})  # fmt: skip
    return rows


def adaptation(work: Path, start: Path, iterations: int, every: int, log: Path) -> dict[str, Any]:
    """Self-supervised training on the real Sintel frames (no ground truth read), scored on them."""
    from unsamflow.pipeline.flow.datasets import open_dataset
    from unsamflow.trainer.evaluation import load_network
    from unsamflow.trainer.evaluation.predictors import ZeroFlow
    from unsamflow.trainer.evaluation.segs import StoreSegs

    root = real_sintel_root()
    out = work / "runs" / "adapt"
    if not checkpoints(out) or checkpoints(out)[-1][0] < iterations:
        run(["unsamflow.trainer", "train", "--preset", PRESET, "--out", str(out),
             "data.dataset=sintel-clean+sintel-final", f"data.roots={root}",
             f"data.masks={work / 'real_masks' / 'stores'}", "data.resize=[192,448]", "data.crop=[192,448]",
             "augment.occlusion_crop=[128,320]", f"model.init_from={start}", f"optim.iterations={iterations}",
             f"logging.checkpoint_every={every}", "loss.hg.ransac_thresh=3.0"], log)  # fmt: skip
    segs = StoreSegs(work / "real_masks" / "stores")
    result: dict[str, Any] = {}
    for name in ("sintel-clean-training", "sintel-final-training"):
        ds = open_dataset(name, root, gt_only=True)
        before, _ = load_network(start, "cpu", test_size=(192, 448))
        after, _ = load_network(checkpoints(out)[-1][1], "cpu", test_size=(192, 448))
        result[name] = {"pairs": len(ds), "zero_epe": score(ZeroFlow(), ds, name)["epe"],
                        "before_epe": score(before, ds, name, segs)["epe"],
                        "after_epe": score(after, ds, name, segs)["epe"]}  # fmt: skip
    return result


# --- the picture -------------------------------------------------------------------------------------


def plot(path: Path, curves: dict[str, list[dict[str, Any]]], lines: dict[str, float], title: str) -> None:
    """Held-out EPE against iterations (one polyline per curve, flat lines for the baselines), with cv2."""
    w, h, m = 900, 500, 60
    img = np.full((h, w, 3), 255, np.uint8)
    xs = [p["iteration"] for c in curves.values() for p in c] or [1]
    ys = [p["epe"] for c in curves.values() for p in c] + list(lines.values())
    xmax, ymax = max(xs), max(ys) * 1.1
    def to_px(x: float, y: float) -> tuple[int, int]:
        return int(m + (w - 2 * m) * x / xmax), int(h - m - (h - 2 * m) * y / ymax)
    cv2.rectangle(img, to_px(0, 0), to_px(xmax, ymax), (0, 0, 0), 1)
    for k in range(6):
        y = ymax * k / 5
        cv2.putText(img, f"{y:.2f}", (5, to_px(0, y)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        x = xmax * k / 5
        cv2.putText(img, f"{int(x)}", (to_px(x, 0)[0] - 10, h - m + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1)
    colours = [(200, 60, 20), (20, 140, 20), (20, 20, 200), (150, 0, 150), (0, 150, 150), (90, 90, 90)]
    legend = 0
    for (name, c), col in zip(curves.items(), colours, strict=False):
        pts = [to_px(p["iteration"], p["epe"]) for p in c]
        for a, b in zip(pts, pts[1:], strict=False):
            cv2.line(img, a, b, col, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, col, -1)
        cv2.putText(img, name, (w - m - 260, m + 18 * legend + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1)
        legend += 1
    for (name, y), col in zip(lines.items(), colours[len(curves):], strict=False):
        cv2.line(img, to_px(0, y), to_px(xmax, y), col, 1, cv2.LINE_AA)
        cv2.putText(img, f"{name} {y:.2f}", (w - m - 260, m + 18 * legend + 12), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    col, 1)
        legend += 1
    cv2.putText(img, title, (m, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
    cv2.putText(img, "iterations", (w // 2 - 30, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img[..., ::-1])


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_work = Path(os.environ.get("TMPDIR", "/tmp")) / "unsamflow-learning"
    ap.add_argument("--work", type=Path, default=default_work,
                    help="data, stores and runs (kept: a second call reuses what is complete)")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)} (default: all but ablation)")
    ap.add_argument("--iterations", type=int, default=800, help="per training run (supervised, unsupervised)")
    ap.add_argument("--every", type=int, default=100, help="checkpoint / held-out evaluation interval")
    ap.add_argument("--adapt-iterations", type=int, default=100)
    ap.add_argument("--ablation-iterations", type=int, default=300,
                    help="per ablation run (12 runs; 300 at ~10 min each on one core)")
    ap.add_argument("--seeds", default="0,1,2", help="ablation seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="ablation runs trained at once (one core each)")
    ap.add_argument("--sup-iterations", type=int, default=None,
                    help="supervised run length (default --iterations; it is cheaper per step)")
    ap.add_argument("--child-supervised", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--force-ablation", action="store_true",
                    help="run the ablation even when the unsupervised run did not learn")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from {PARTS}")
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    if args.child_supervised:  # the supervised run as its own process (beside the unsupervised one)
        curve = train_supervised(work, args.sup_iterations or args.iterations, 2, 0, args.every)
        (work / "supervised.json").write_text(json.dumps(curve))
        return
    t0 = time.time()
    load = os.getloadavg()
    prev = RESULTS / "learning.json"
    doc: dict[str, Any] = json.loads(prev.read_text()) if prev.is_file() else {}
    res: dict[str, Any] = doc.get("results", {})
    if "unsupervised" in parts or "config" not in res:  # the headline call's settings stay with its figures
        res["load_avg_at_start"] = list(load)
        res["config"] = {"size": list(SIZE), "iterations": args.iterations, "every": args.every,
                         "preset": PRESET, "batch": 2, "adapt_iterations": args.adapt_iterations}
    if "ablation" in parts:
        res["ablation_config"] = {"iterations": args.ablation_iterations, "seeds": args.seeds,
                                  "jobs": args.jobs, "load_avg_at_start": list(load)}
    timings = res.setdefault("minutes", {})

    def timed(name: str, fn):
        t = time.time()
        out = fn()
        timings[name] = round((time.time() - t) / 60, 2)
        print(f"[{name}] {timings[name]} min", flush=True)
        return out

    if "data" in parts:
        timed("data", lambda: make_data(work, log))
    if "baselines" in parts:
        from unsamflow.trainer.evaluation.predictors import DISFlow, ZeroFlow

        res["baselines"] = timed("baselines", lambda: {"zero": score(ZeroFlow(), heldout(work), "synthetic"),
                                                       "dis": score(DISFlow(), heldout(work), "synthetic")})
    child = None
    if "supervised" in parts:
        t_sup = time.time()
        cmd = [sys.executable, "-m", "benchmarks.bench_learning", "--work", str(work), "--child-supervised",
               "--iterations", str(args.iterations), "--every", str(args.every), "--threads", "1"]
        if args.sup_iterations:
            cmd += ["--sup-iterations", str(args.sup_iterations)]
        child = subprocess.Popen(cmd, cwd=REPO, env=ENV)
    main_run = work / "runs" / "unsup_seed0"
    if "unsupervised" in parts:
        def unsup():
            train_unsupervised(work, main_run, args.iterations, 0, args.every, [], log)
            return curve_of(main_run, work)
        res["unsupervised"] = timed("unsupervised", unsup)
    if child is not None:
        if child.wait() != 0:
            raise SystemExit("the supervised run failed")
        res["supervised"] = json.loads((work / "supervised.json").read_text())
        timings["supervised"] = round((time.time() - t_sup) / 60, 2)
    if "real" in parts:
        from unsamflow.trainer.evaluation import load_network
        from unsamflow.trainer.evaluation.segs import SegmenterSegs

        final = checkpoints(main_run)[-1][1]
        def real():
            predictor, _ = load_network(final, "cpu")
            return {"final_checkpoint": score_real(predictor, SegmenterSegs()),
                    "adaptation": adaptation(work, final, args.adapt_iterations, args.adapt_iterations, log)}
        res["real"] = timed("real", real)
    unsup, zero = res.get("unsupervised"), res.get("baselines", {}).get("zero", {}).get("epe")
    learned = bool(unsup and zero and unsup[-1]["epe"] / zero <= LEARNED)
    if "ablation" in parts and not learned and not args.force_ablation:
        got = unsup[-1]["epe"] if unsup else "?"
        res["ablation"] = {"skipped": (
            f"the unsupervised run did not learn (held-out EPE {got} vs zero flow {zero}; the ablation needs "
            f"<= {LEARNED} of zero flow): comparing parts of a network that has not learned flow measures "
            "noise (--force-ablation runs it anyway)")}
        print(f"ablation skipped: {res['ablation']['skipped']}", flush=True)
    elif "ablation" in parts:
        its = args.ablation_iterations
        seeds = [int(s) for s in args.seeds.split(",")]
        def ablation():
            runs: list[tuple[str, int, Path]] = []
            todo = []
            for name, (aug, hg, mf) in VARIANTS.items():
                for seed in seeds:
                    if name == "+aug+hg+mf" and seed == 0 and its == args.iterations and main_run.is_dir():
                        d = main_run  # the full recipe at seed 0 is the unsupervised run above
                    else:
                        d = work / "runs" / f"ablation_{name.replace('+', 'p')}_seed{seed}"
                        todo.append((d, seed, variant_overrides(aug, hg, mf)))
                    runs.append((name, seed, d))
            # One training process per core (each one math thread); each run logs to its own file.
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                for f in [pool.submit(train_unsupervised, work, d, its, seed, its, extra,
                                      work / f"commands_{d.name}.log") for d, seed, extra in todo]:
                    f.result()
            table: dict[str, list[dict[str, Any]]] = {}
            for name, seed, d in runs:
                final = score_checkpoint(checkpoints(d)[-1][1], work)
                table.setdefault(name, []).append({"seed": seed, "iterations": its, **final})
                print(f"ablation {name} seed {seed}: {table[name][-1]['epe']:.3f}", flush=True)
            return table
        res["ablation"] = timed("ablation", ablation)
    timings["total_this_call"] = round((time.time() - t0) / 60, 2)
    if "unsupervised" in parts:  # the headline wall time: `make learning`'s call, not a later --parts call
        timings["learning_call"] = timings["total_this_call"]
    report(res, work)


def report(res: dict[str, Any], work: Path) -> None:
    """learning.json / .md / .png from what has been measured so far."""
    summary: dict[str, Any] = {"results": res}
    zero = res.get("baselines", {}).get("zero", {}).get("epe")
    rows: list[dict[str, Any]] = []
    if zero:
        dis = res["baselines"]["dis"]
        z = res["baselines"]["zero"]
        rows.append({"what": "zero flow", "epe": zero, "epe_non_occ": z.get("epe_non_occ"),
                     "epe_occ": z.get("epe_occ"), "vs_zero": 1.0})  # fmt: skip
        rows.append({"what": "OpenCV DIS", "epe": dis["epe"], "epe_non_occ": dis.get("epe_non_occ"),
                     "epe_occ": dis.get("epe_occ"), "vs_zero": dis["epe"] / zero})
    for key, label in (("supervised", "supervised (ceiling)"), ("unsupervised", "unsupervised cpu-small")):
        curve = res.get(key)
        if curve and zero:
            last = curve[-1]
            rows.append({"what": f"{label}, {last['iteration']} it", "epe": last["epe"],
                         "epe_non_occ": last.get("epe_non_occ"), "epe_occ": last.get("epe_occ"),
                         "vs_zero": last["epe"] / zero})  # fmt: skip
            short = "sup" if key == "supervised" else "unsup"
            summary[f"{short}_heldout_epe_vs_zero"] = round(last["epe"] / zero, 4)
    raw = res.get("reference_costs_same_budget")  # model.normalize_corr_features=false, an earlier call
    if raw and zero:
        for key, label in (("supervised", "supervised"), ("unsupervised", "unsupervised")):
            rows.append({"what": f"{label}, reference's raw cost volume, {raw[key + '_iteration']} it",
                         "epe": raw[key], "vs_zero": raw[key] / zero})
    adapt = res.get("real", {}).get("adaptation", {})
    if adapt:
        ratios = [v["after_epe"] / v["zero_epe"] for v in adapt.values()]
        summary["real_adapt_epe_vs_zero"] = round(float(np.mean(ratios)), 4)
    real = res.get("real", {})
    for r in real.get("final_checkpoint", []):
        if "model_epe" in r:
            rows.append({"what": f"real: {r['set']} ({r['pairs']} pairs), final unsupervised checkpoint",
                         "epe": r["model_epe"], "vs_zero": r["model_epe"] / r["zero_epe"]})
    for name, v in adapt.items():
        rows.append({"what": f"real: {name} ({v['pairs']} pairs), before adaptation", "epe": v["before_epe"],
                     "vs_zero": v["before_epe"] / v["zero_epe"]})
        rows.append({"what": f"real: {name}, after self-supervised adaptation on these frames",
                     "epe": v["after_epe"], "vs_zero": v["after_epe"] / v["zero_epe"]})
    ablation = res.get("ablation", {})
    if isinstance(ablation, dict) and "skipped" not in ablation:
        stats = {}
        for name, runs in ablation.items():
            e = np.array([r["epe"] for r in runs])
            sd = float(e.std(ddof=1)) if len(e) > 1 else float("nan")  # sample std over seeds
            stats[name] = (float(e.mean()), sd)
            its = runs[0].get("iterations", "?")
            rows.append({"what": f"ablation {name}, {its} it ({len(e)} seeds: mean ± sample std)",
                         "epe": f"{e.mean():.3f} ± {sd:.3f}",
                         "epe_non_occ": float(np.mean([r["epe_non_occ"] for r in runs])),
                         "epe_occ": float(np.mean([r["epe_occ"] for r in runs])),
                         "vs_zero": e.mean() / zero if zero else None})
        if "base" in stats:  # plain rule: a difference counts when it is larger than both seed spreads
            mb, sb = stats["base"]
            summary["ablation_vs_base"] = {
                name: {"diff": round(m - mb, 4), "larger_std": round(max(sd, sb), 4),
                       "exceeds_seed_spread": bool(abs(m - mb) > max(sd, sb))}
                for name, (m, sd) in stats.items() if name != "base"}
    # the wall time of the call (the supervised run goes on beside the unsupervised one: parts overlap)
    minutes = res.get("minutes", {})
    summary["wall_minutes"] = minutes.get("learning_call", minutes.get("total_this_call"))
    if "ablation" in minutes:
        summary["ablation_wall_minutes"] = minutes["ablation"]
    notes = (f"Held-out synthetic pairs ({SIZE[0]}x{SIZE[1]}); EPE in px; load average at start "
             f"{res.get('load_avg_at_start', ['?'])[0]}. See learning.png and the JSON for curves, real "
             "pairs and the ablation.")
    details = summary.pop("results")
    write_results("learning", rows, notes, summary=summary)
    doc = json.loads((RESULTS / "learning.json").read_text())
    doc["results"] = details  # curves, real pairs, ablation: in the JSON, summarised in the README
    (RESULTS / "learning.json").write_text(json.dumps(doc, indent=1))
    curves = {k: res[k] for k in ("supervised", "unsupervised") if res.get(k)}
    if curves and zero:
        plot(RESULTS / "learning.png", curves, {"zero flow": zero, "DIS": res["baselines"]["dis"]["epe"]},
             f"held-out EPE (px), {SIZE[0]}x{SIZE[1]} synthetic, batch 2, CPU")


if __name__ == "__main__":
    main()
