"""MPI-Sintel: <split>/<pass>/<sequence>/frame_%04d.png with training GT beside the passes.

Ground truth of pair frame_i -> frame_i+1 is named after frame i:
training/flow/<seq>/frame_i.flo, training/occlusions/<seq>/frame_i.png and
training/invalid/<seq>/frame_i.png (255 = occluded / invalid). The test split has none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, existing, numbered_sequences
from unsamflow.pipeline.manifest import Pair

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
        scan_pass(root, split, group, out)
    return out


def scan_pass(root: Path, split: str, group: str, out: ScanResult) -> None:
    """Frames and pairs of one pass folder (e.g. training/clean), with the split's ground truth."""
    for seq, pairs in numbered_sequences(root, group, _FRAME, out):
        for a, b in pairs:
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


LAYOUT = Layout(
    name="sintel",
    description="MPI-Sintel: training|test/clean|final/<seq>/frame_%04d.png, GT flow/, occlusions/, invalid/",
    scanner=_scan,
    options={"split": "training", "passes": ["clean", "final"]},
    choices={"split": ("training", "test"), "passes": PASSES},
    groups=_groups,
    has_counts=True,
)
