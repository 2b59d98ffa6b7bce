"""Tracks on synthetic sequences with fast motion: the flow linker against plain IoU, and what `track` costs.

Data: synthetic scenes (pipeline.synthetic) of the "hard" difficulty with faster objects (up to
FAST px per frame, rotation, zoom, perspective, lighting change, noise), with exact instance ids.
Two kinds of masks:
- `instances`: the true instance masks (a perfect segmenter), so only the linking is measured;
- `graph`: the weight-free default segmenter through `pipeline run` (nested multi-scale masks, of which
  the one matching an object best counts, see pipeline.track_metrics).
Linkers: `flow` (DIS flow carries each track, the default), `iou` (the same matching without flow:
IoU at the same place), both with gap 1; on the instance masks also `flow` with the exact flow (`oracle`,
a plug-in flow that looks each frame up by its pixels), which separates the flow's errors from the
linker's. Scores per pipeline.track_metrics (identity switches, purity,
completeness, HOTA's association accuracy AssA at IoU 0.5), summed (switches) or averaged over the
sequences weighted by matches.

Cost: `pipeline run` with the graph segmenter and the track stage on 2 local workers, per stage from its
--json summary; the track stage against the rest of the run. The flow's share of the track stage is the
DIS time over the same frame pairs in one process.

    python -m benchmarks.bench_tracks          (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from unsamflow.pipeline.flow.io import read_label_png
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.linker import TrackConfig
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.store import MaskStore
from unsamflow.pipeline.store.tracks import read_mask_tracks
from unsamflow.pipeline.synthetic.dataset import build_manifest, synth_params, write_sequence
from unsamflow.pipeline.synthetic.scenes import config_for
from unsamflow.pipeline.track import DISFlow, run_track
from unsamflow.pipeline.track_metrics import frame_matches, score_sequence

from benchmarks.common import write_results

SEQUENCES, FRAMES, SIZE, SEED = 6, 8, (256, 320), 0
FAST = 24.0  # px per frame, objects ("hard" is 16)
RUNS = 2


def make_set(root: Path) -> Manifest:
    cfg = config_for("hard", SIZE[0], SIZE[1], FRAMES, max_translation=FAST)
    frames, pairs = [], []
    for i in range(SEQUENCES):
        f, p = write_sequence(root, i, cfg, SEED)
        frames += f
        pairs += p
    manifest = build_manifest(root, frames, pairs, synth_params(cfg, SEQUENCES, SEED, "hard"))
    manifest.save(root / "manifest.json")
    return manifest


def instance_stores(root: Path, manifest: Manifest, out: Path) -> None:
    """The true instances as masks, one store per sequence (as tests/conftest.write_instance_stores)."""
    from unsamflow.pipeline.derive import DeriveConfig, derive
    from unsamflow.pipeline.images import file_sha256
    from unsamflow.pipeline.store import StoreWriter
    from unsamflow.pipeline.synthetic.scenes import instance_records

    cfg = DeriveConfig()
    for seq, frames in manifest.sequences().items():
        with StoreWriter(out / f"{seq.split('/')[-1]}.h5", segmenter={"name": "instances", "config": {}},
                         derive_config=cfg.to_dict(), source={"layout": "synthetic", "root": str(root)}) as w:
            for f in frames:
                inst = read_label_png(root / f.id.replace("/clean/", "/instances/"))
                records = instance_records(inst)
                masks = np.stack([r["segmentation"] for r in records])
                full_seg, key = derive(masks, np.array([r["bbox"] for r in records], float), cfg)
                w.add_frame(f.id, image_shape=inst.shape, sha256=file_sha256(root / f.id), records=records,
                            full_seg=full_seg, key_objects=key)


class OracleFlow:
    """The synthetic set's exact backward flow, found by the frames' pixels (a `--flow` plug-in)."""

    def __init__(self, root: str):
        from unsamflow.pipeline.flow.io import read_flo
        from unsamflow.pipeline.synthetic.dataset import frame_path

        self.flows = {}
        for frames in Manifest.load(Path(root) / "manifest.json").sequences().values():
            for k, f in enumerate(frames[1:], start=2):
                seq = f.id.split("/")[2]
                key = read_rgb(Path(root) / f.id)[0].tobytes()
                self.flows[key] = read_flo(Path(root) / frame_path("flow_bw", seq, k, ".flo"))[0]

    def __call__(self, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        return self.flows[new.tobytes()]


def oracle_flow(root: str) -> OracleFlow:
    return OracleFlow(root)


def score(root: Path, manifest: Manifest, stores: Path) -> dict:
    """Scores summed / match-weighted over the sequences (the background, id 0, is not an object)."""
    where = {}
    for path in sorted(stores.glob("*.h5")):
        with MaskStore(path) as s:
            where.update({fid: path for fid in s.frame_ids})
    per_seq = []
    for frames in manifest.sequences().values():
        rows = []
        for f in frames:
            inst = read_label_png(root / f.id.replace("/clean/", "/instances/"))
            with MaskStore(where[f.id]) as s:
                rows.append(frame_matches(s.read_masks(f.id), read_mask_tracks(s, f.id), inst, ignore=(0,)))
        per_seq.append(score_sequence(rows))
    m = sum(s.matches for s in per_seq) or 1
    return {
        "id_switches": sum(s.id_switches for s in per_seq),
        "switches_old_track_present": sum(s.switches_old_track_present for s in per_seq),
        "purity": sum(s.purity * s.matches for s in per_seq) / m,
        "completeness": sum(s.completeness * s.matches for s in per_seq) / m,
        "assa": sum(s.assa * s.matches for s in per_seq) / m,
        "matches": sum(s.matches for s in per_seq),
        "instances": sum(s.instances for s in per_seq),
        "tracks": sum(s.tracks for s in per_seq),
    }


def pipeline(*args: str) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "unsamflow.pipeline", *args, "--json"], capture_output=True,
                          text=True, env=env)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"pipeline {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_tracks_"))
    try:
        root = work / "synthetic"
        manifest = make_set(root)
        rows = []
        # Linking alone: exact instance masks.
        oracle = TrackConfig(flow="benchmarks.bench_tracks:oracle_flow", options={"root": str(root)})
        for name, cfg in (("flow", TrackConfig()), ("iou", TrackConfig(linker="iou")), ("oracle", oracle)):
            stores = work / f"instances-{name}"
            instance_stores(root, manifest, stores)
            t0 = time.perf_counter()
            run_track(stores, manifest, cfg, None, progress=False)
            rows.append({"masks": "instances", "linker": name, **score(root, manifest, stores),
                         "track_s": time.perf_counter() - t0})
        # The default segmenter through `pipeline run` (which tracks with the flow linker), then the
        # IoU linker on a copy of its stores.
        runs = []
        for k in range(RUNS):  # the cost is noisy on a shared machine: RUNS fresh runs
            out = work / f"run{k}"
            runs.append(pipeline("run", "--manifest", str(root / "manifest.json"), "--out", str(out),
                                 "--shards", "6", "--workers", "2", "--no-dashboard", "--pictures", "0",
                                 "--no-hash")["stages_s"])
        stages = runs[-1]
        graph_stores = out / "stores"
        rows.append({"masks": "graph", "linker": "flow", **score(root, manifest, graph_stores),
                     "track_s": stages["track"]})
        iou_stores = work / "graph-iou"
        shutil.copytree(graph_stores, iou_stores)
        for p in iou_stores.glob("*.lock"):
            p.unlink()
        t0 = time.perf_counter()
        run_track(iou_stores, manifest, TrackConfig(linker="iou"), None, progress=False)
        rows.append({"masks": "graph", "linker": "iou", **score(root, manifest, iou_stores),
                     "track_s": time.perf_counter() - t0})
        # The flow's share: DIS over the same pairs, one process.
        dis = DISFlow()
        t_flow = 0.0
        for frames in manifest.sequences().values():
            imgs = [read_rgb(root / f.id)[0] for f in frames]
            for old, new in zip(imgs, imgs[1:], strict=False):
                t0 = time.perf_counter()
                dis(new, old)
                t_flow += time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rests = [sum(v for k, v in st.items() if k != "track") for st in runs]
    costs = [st["track"] / r for st, r in zip(runs, rests, strict=True)]
    by = {(r["masks"], r["linker"]): r for r in rows}

    def ratio(masks: str) -> float:
        return by[(masks, "flow")]["id_switches"] / max(1, by[(masks, "iou")]["id_switches"])

    summary_figures = {
        "sequences": SEQUENCES, "frames_per_sequence": FRAMES, "size": f"{SIZE[0]}x{SIZE[1]}",
        "max_object_px_per_frame": FAST,
        "id_switches_flow_over_iou_instances": round(ratio("instances"), 4),
        "id_switches_flow_over_iou_graph": round(ratio("graph"), 4),
        "run_without_track_s": [round(r, 2) for r in rests],
        "track_stage_s": [round(st["track"], 2) for st in runs],
        "track_cost_vs_run": [round(c, 4) for c in costs],
        "track_cost_vs_run_mean": round(sum(costs) / len(costs), 4),
        "dis_flow_s_all_pairs_one_process": round(t_flow, 2),
        "stages_s_last_run": {k: round(v, 2) for k, v in stages.items()},
        "bench_wall_s": round(time.perf_counter() - t_start, 1),
    }
    notes = (
        "Synthetic 'hard' scenes with objects up to 24 px per frame; identity switches summed over the "
        "sequences, purity / completeness / AssA (HOTA association accuracy, IoU 0.5) weighted by matches "
        "(pipeline.track_metrics); switches_old_track_present: switches where the instance's previous track "
        "still has a mask in that frame. `track_cost_vs_run`: the track stage of `pipeline run` (graph "
        "segmenter, 2 local workers sharing one cluster with segment) over the rest of that run."
    )
    write_results("tracks", rows, notes, summary_figures)


if __name__ == "__main__":
    main()
