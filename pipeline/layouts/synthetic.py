"""Synthetic scenes written by `pipeline synth`: Sintel-like training/clean/<seq>/frame_%04d.png.

Ground truth of pair frame_k -> frame_k+1 is named after frame k (flow/, occlusions/), as in
Sintel; backward flow, backward occlusions and instance maps (pipeline.synthetic.gt_paths) sit
beside them. The tree is scanned, not read from manifest.json, so a copied or moved set still works.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"frame_(\d+)\.png")
_GROUP = "training/clean"


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    if not (root / _GROUP).is_dir():
        out.missing_dirs.append(_GROUP)
        return out
    sequences, stray = list_dir(root, _GROUP)
    out.ignored += [f"{_GROUP}/{name}" for name in stray]
    for seq in sequences:
        key = f"{_GROUP}/{seq}"
        numbered: list[tuple[int, Frame]] = []
        for name in list_dir(root, key)[1]:
            m = _FRAME.fullmatch(name)
            if m is None:
                out.ignored.append(f"{key}/{name}")
                continue
            frame = Frame(id=f"{key}/{name}", sequence=key)
            out.frames.append(frame)
            numbered.append((int(m.group(1)), frame))
        for a, b in numbered_pairs(numbered):
            stem = Path(a.id).stem
            out.pairs.append(
                Pair(
                    a.id,
                    b.id,
                    flow=existing(root, f"training/flow/{seq}/{stem}.flo"),
                    occlusion=existing(root, f"training/occlusions/{seq}/{stem}.png"),
                )
            )
    return out


LAYOUT = Layout(
    name="synthetic",
    description="synthetic scenes from `pipeline synth`: training/clean/<seq>/frame_%04d.png, GT flow/, "
    "flow_bw/, occlusions/, occlusions_bw/, instances/",
    scanner=_scan,
    groups=lambda options: [_GROUP],
)
