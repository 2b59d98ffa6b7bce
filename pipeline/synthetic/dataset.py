"""Synthetic data sets on disk: scenes of pipeline.synthetic.scenes written as a Sintel-like tree.

Deterministic by seed (sequence i of a set with seed S is scene (S, i)), idempotent and resumable:
each finished sequence leaves a marker under .synth/, and manifest.json is written last.

On disk (Sintel-like; k is the 1-based frame number; a per-frame file describes the pixels of frame k):
  training/clean/<seq>/frame_%04d.png        frames (RGB)
  training/flow/<seq>/frame_%04d.flo         forward flow k -> k+1  (k < T)
  training/flow_bw/<seq>/frame_%04d.flo      backward flow k -> k-1 (k > 1)
  training/occlusions/<seq>/frame_%04d.png   255 where frame k's pixel is hidden in frame k+1
  training/occlusions_bw/<seq>/frame_%04d.png  likewise towards frame k-1
  training/instances/<seq>/frame_%04d.png    16-bit instance ids (0 = background; ids stable in time)
  manifest.json                              a pipeline Manifest, layout "synthetic"
All flow is known (no unknown values), so the valid mask is everything.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.flow.io import write_flo, write_mask_png
from unsamflow.pipeline.images import write_png
from unsamflow.pipeline.manifest import Frame, Manifest, Pair
from unsamflow.pipeline.synthetic.scenes import SceneConfig, config_for, make_scene

LAYOUT = "synthetic"


def sequence_name(index: int) -> str:
    return f"seq_{index:03d}"


def frame_path(kind: str, seq: str, k: int, ext: str = ".png") -> str:
    """Relative path of a per-frame file (kind: clean, flow, flow_bw, occlusions[_bw], instances)."""
    return f"training/{kind}/{seq}/frame_{k:04d}{ext}"


def gt_paths(frame1: str, frame2: str) -> dict[str, str]:
    """Ground-truth files of a pair (frame ids as in the manifest) beyond what Pair carries."""
    seq, k1, k2 = _parse(frame1), _number(frame1), _number(frame2)
    return {
        "flow_bw": frame_path("flow_bw", seq, k2, ".flo"),
        "occ_bw": frame_path("occlusions_bw", seq, k2),
        "inst1": frame_path("instances", seq, k1),
        "inst2": frame_path("instances", seq, k2),
    }


def _number(frame_id: str) -> int:
    return int(Path(frame_id).stem.split("_")[-1])


def _parse(frame_id: str) -> str:
    parts = frame_id.split("/")
    if len(parts) != 4 or parts[:2] != ["training", "clean"] or not parts[3].startswith("frame_"):
        raise BadInputError(f"{frame_id!r} is not a synthetic frame id (training/clean/<seq>/frame_NNNN.png)")
    return parts[2]


def write_sequence(
    out: str | Path, index: int, config: SceneConfig, seed: int
) -> tuple[list[Frame], list[Pair]]:
    """Generate sequence `index` of the set with this seed and write its files under `out`."""
    out = Path(out)
    seq = sequence_name(index)
    scene = make_scene(config, np.random.default_rng([seed, index]))
    frames, pairs = [], []
    for t, (img, inst) in enumerate(zip(scene.frames, scene.instances, strict=True)):
        k = t + 1
        fid = frame_path("clean", seq, k)
        write_png(out / fid, img)
        write_png(out / frame_path("instances", seq, k), inst)
        frames.append(Frame(fid, f"training/clean/{seq}"))
        if t + 1 < config.frames:
            fw, occ = scene.flow(t, t + 1)
            write_flo(out / frame_path("flow", seq, k, ".flo"), fw)
            write_mask_png(out / frame_path("occlusions", seq, k), occ)
            pairs.append(Pair(fid, frame_path("clean", seq, k + 1), flow=frame_path("flow", seq, k, ".flo"),
                              occlusion=frame_path("occlusions", seq, k)))  # fmt: skip
        if t > 0:
            bw, occ_bw = scene.flow(t, t - 1)
            write_flo(out / frame_path("flow_bw", seq, k, ".flo"), bw)
            write_mask_png(out / frame_path("occlusions_bw", seq, k), occ_bw)
    return frames, pairs


def synth_params(config: SceneConfig, sequences: int, seed: int, difficulty: str) -> dict:
    """What identifies a generated set (stored in the manifest; equal params -> nothing to do)."""
    params = {"sequences": sequences, "seed": seed, "difficulty": difficulty, **asdict(config)}
    return json.loads(json.dumps(params))  # as a manifest stores it (tuples become lists)


def build_manifest(root: str | Path, frames: list[Frame], pairs: list[Pair], params: dict) -> Manifest:
    return Manifest(LAYOUT, str(Path(root).resolve()), frames, pairs, {"synth": params})


def generate_dataset(
    out: str | Path,
    sequences: int = 4,
    frames: int = 2,
    size: tuple[int, int] = (256, 320),
    seed: int = 0,
    difficulty: str = "medium",
    progress: bool = False,
) -> tuple[Manifest, int]:
    """Write a synthetic set under `out` (idempotent, resumable): (manifest, sequences generated now).

    A finished set with the same parameters is left alone (0 generated). Sequences finished by an
    interrupted run with the same parameters are kept. A folder holding a set made with different
    parameters is refused rather than overwritten.
    """
    from tqdm import tqdm
    from unsamflow.pipeline.progress import bar_disable

    if sequences < 1:
        raise BadInputError(f"--sequences must be at least 1, got {sequences}")
    out = Path(out)
    config = config_for(difficulty, size[0], size[1], frames)
    params = synth_params(config, sequences, seed, difficulty)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = Manifest.load(manifest_path)
        before = old.meta.get("synth") or {}
        if old.layout != LAYOUT or before != params:
            diff = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in params.items() if before.get(k) != v]
            what = ", ".join(diff[:4]) or f"layout {old.layout}"
            raise BadInputError(
                f"{out} already holds a data set made with other parameters ({what}); "
                f"choose another --out or remove {manifest_path.name} and its files"
            )
        return old, 0
    done_dir = out / ".synth"
    all_frames: list[Frame] = []
    all_pairs: list[Pair] = []
    made = 0
    for i in tqdm(range(sequences), desc="synth", unit="seq", disable=bar_disable(progress)):
        marker = done_dir / f"{sequence_name(i)}.json"
        record = json.loads(marker.read_text()) if marker.is_file() else None
        if record is None or record.get("params") != params:
            f, p = write_sequence(out, i, config, seed)
            record = {"params": params, "frames": [asdict(x) for x in f], "pairs": [asdict(x) for x in p]}
            write_bytes_atomic(marker, json.dumps(record).encode())
            made += 1
        all_frames += [Frame(**x) for x in record["frames"]]
        all_pairs += [Pair(**x) for x in record["pairs"]]
    manifest = build_manifest(out, all_frames, all_pairs, params)
    manifest.save(manifest_path)
    return manifest, made
