"""Synthetic scenes written by `pipeline synth`: Sintel-like training/clean/<seq>/frame_%04d.png.

Ground truth of pair frame_k -> frame_k+1 is named after frame k (flow/, occlusions/), as in
Sintel; backward flow, backward occlusions and instance maps (pipeline.synthetic.dataset.gt_paths) sit
beside them. The tree is scanned, not read from manifest.json, so a copied or moved set still works.
A Sintel-like tree without the generator's own folders (instances/, flow_bw/) is refused: scanned as
synthetic, a real Sintel download was evaluated under the wrong name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts.base import Layout, ScanResult
from unsamflow.pipeline.layouts.sintel import scan_pass

_GROUP = "training/clean"


MARKERS = ("training/instances", "training/flow_bw")  # written by `pipeline synth`, by nothing else


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    if (root / "training").is_dir() and not any((root / m).is_dir() for m in MARKERS):
        kind = " (it looks like MPI-Sintel: use the sintel layout or a sintel-* name)" if (
            root / "training" / "final").is_dir() or (root / "training" / "invalid").is_dir() else ""
        raise BadInputError(f"{root} is not a synthetic set from `pipeline synth`: it has none of "
                            f"{', '.join(m + '/' for m in MARKERS)}{kind}")  # fmt: skip
    out = ScanResult()
    scan_pass(root, "training", _GROUP, out)  # the tree is Sintel's training split, clean pass only
    return out


LAYOUT = Layout(
    name="synthetic",
    description="synthetic scenes from `pipeline synth`: training/clean/<seq>/frame_%04d.png, GT flow/, "
    "flow_bw/, occlusions/, occlusions_bw/, instances/",
    scanner=_scan,
    groups=lambda options: [_GROUP],
)
