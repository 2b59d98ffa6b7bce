"""MPI-Sintel: <split>/<pass>/<sequence>/frame_%04d.png with training GT beside the passes.

Ground truth of pair frame_i -> frame_i+1 is named after frame i:
training/flow/<seq>/frame_i.flo, training/occlusions/<seq>/frame_i.png and
training/invalid/<seq>/frame_i.png (255 = occluded / invalid). The test split has none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"frame_(\d+)\.png")
PASSES = ("clean", "final", "albedo")


def _groups(options: dict[str, Any]) -> list[str]:
    return [f"{options['split']}/{p}" for p in options["passes"]]


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    split = options["split"]
    out = ScanResult()
    if not (root / split).is_dir():
        out.missing_dirs.append(split)
        return out
    for group in _groups(options):
        if not (root / group).is_dir():
            out.missing_dirs.append(group)
            continue
        sequences, stray = list_dir(root, group)
        out.ignored += [f"{group}/{name}" for name in stray]
        for seq in sequences:
            key = f"{group}/{seq}"
            _, names = list_dir(root, key)
            numbered: list[tuple[int, Frame]] = []
            for name in names:
                m = _FRAME.fullmatch(name)
                if m is None:
                    out.ignored.append(f"{key}/{name}")
                    continue
                frame = Frame(id=f"{key}/{name}", sequence=key)
                out.frames.append(frame)
                numbered.append((int(m.group(1)), frame))
            for a, b in numbered_pairs(numbered):
                stem = Path(a.id).stem  # frame_0002
                out.pairs.append(
                    Pair(
                        a.id,
                        b.id,
                        flow=existing(root, f"{split}/flow/{seq}/{stem}.flo"),
                        occlusion=existing(root, f"{split}/occlusions/{seq}/{stem}.png"),
                        invalid=existing(root, f"{split}/invalid/{seq}/{stem}.png"),
                    )
                )
    return out


LAYOUT = Layout(
    name="sintel",
    description="MPI-Sintel: training|test/clean|final/<seq>/frame_%04d.png, GT flow/, occlusions/, invalid/",
    scanner=_scan,
    options={"split": "training", "passes": ["clean", "final"]},
    choices={"split": ("training", "test"), "passes": PASSES},
    groups=_groups,
)
