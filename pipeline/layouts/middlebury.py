"""Middlebury flow, "other" set: other-data[-gray]/<seq>/frameNN.png, GT other-gt-flow/<seq>/flow10.flo.

The public ground truth covers only the frame10 -> frame11 pair of 8 of the sequences; the
all-frames download (frame07 .. frame14) adds pairs without ground truth.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, existing, numbered_sequences
from unsamflow.pipeline.manifest import Pair

_FRAME = re.compile(r"frame(\d+)\.png")


def _groups(options: dict[str, Any]) -> list[str]:
    return ["other-data-gray" if options["gray"] else "other-data"]


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    (group,) = _groups(options)
    out = ScanResult()
    for seq, pairs in numbered_sequences(root, group, _FRAME, out):
        for a, b in pairs:
            gt = None
            if Path(a.id).name == "frame10.png":
                gt = existing(root, f"other-gt-flow/{seq}/flow10.flo")
            out.pairs.append(Pair(a.id, b.id, flow=gt))
    return out


LAYOUT = Layout(
    name="middlebury",
    description="Middlebury other-data[-gray]/<seq>/frameNN.png, GT other-gt-flow/<seq>/flow10.flo",
    scanner=_scan,
    options={"gray": False},
    groups=_groups,
    has_counts=True,
)
