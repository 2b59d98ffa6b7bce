"""FlyingThings3D (the full release, as ptlflow and RAFT read it):
frames_cleanpass|frames_finalpass/TRAIN|TEST/A|B|C/<NNNN>/left|right/<frame>.png, forward ground truth of
pair frame -> frame+1 in optical_flow/<split>/<letter>/<NNNN>/into_future/<camera>/
OpticalFlowIntoFuture_<frame>_L|R.pfm. One sequence per scene, pass and camera.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from unsamflow.pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"(\d{4})\.png")
SPLITS = {"train": "TRAIN", "test": "TEST"}


def _groups(options: dict[str, Any]) -> list[str]:
    return [f"frames_{p}pass/{SPLITS[options['split']]}" for p in options["passes"]]


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    split = SPLITS[options["split"]]
    for group in _groups(options):
        if not (root / group).is_dir():
            out.missing_dirs.append(group)
            continue
        for letter in list_dir(root, group)[0]:
            for scene in list_dir(root, f"{group}/{letter}")[0]:
                for cam in options["cameras"]:
                    folder = f"{group}/{letter}/{scene}/{cam}"
                    numbered = []
                    for name in list_dir(root, folder)[1]:
                        m = _FRAME.fullmatch(name)
                        if m is None:
                            out.ignored.append(f"{folder}/{name}")
                            continue
                        numbered.append((int(m[1]), Frame(f"{folder}/{name}", folder)))
                    numbered.sort(key=lambda nf: nf[0])
                    out.frames += [f for _, f in numbered]
                    gt = f"optical_flow/{split}/{letter}/{scene}/into_future/{cam}"
                    for a, b in numbered_pairs(numbered):
                        stem = Path(a.id).stem
                        flow = existing(root, f"{gt}/OpticalFlowIntoFuture_{stem}_{cam[0].upper()}.pfm")
                        out.pairs.append(Pair(a.id, b.id, flow=flow))
    return out


LAYOUT = Layout(
    name="flyingthings3d",
    description="FlyingThings3D: frames_clean|finalpass/TRAIN|TEST/A|B|C/NNNN/left|right/NNNN.png, GT "
    "optical_flow/.../into_future/<camera>/*.pfm",
    scanner=_scan,
    options={"split": "train", "passes": ["clean"], "cameras": ["left"]},
    choices={"split": tuple(SPLITS), "passes": ("clean", "final"), "cameras": ("left", "right")},
    groups=_groups,
)
