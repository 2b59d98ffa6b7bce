"""Synthetic scenes written by `pipeline synth`: Sintel-like training/clean/<seq>/frame_%04d.png.

Ground truth of pair frame_k -> frame_k+1 is named after frame k (flow/, occlusions/), as in
Sintel; backward flow, backward occlusions and instance maps (pipeline.synthetic.dataset.gt_paths) sit
beside them. The tree is scanned, not read from manifest.json, so a copied or moved set still works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult
from unsamflow.pipeline.layouts.sintel import scan_pass

_GROUP = "training/clean"


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
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
