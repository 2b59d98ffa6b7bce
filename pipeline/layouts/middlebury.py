"""Middlebury flow, "other" set: other-data[-gray]/<seq>/frameNN.png, GT other-gt-flow/<seq>/flow10.flo.

The public ground truth covers only the frame10 -> frame11 pair of 8 of the sequences; the
all-frames download (frame07 .. frame14) adds pairs without ground truth.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"frame(\d+)\.png")


def _groups(options: dict[str, Any]) -> list[str]:
    return ["other-data-gray" if options["gray"] else "other-data"]


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    (group,) = _groups(options)
    out = ScanResult()
    if not (root / group).is_dir():
        out.missing_dirs.append(group)
        return out
    sequences, stray = list_dir(root, group)
    out.ignored += [f"{group}/{name}" for name in stray]
    for seq in sequences:
        key = f"{group}/{seq}"
        numbered: list[tuple[int, Frame]] = []
        for name in list_dir(root, key)[1]:
            m = _FRAME.fullmatch(name)
            if m is None:
                out.ignored.append(f"{key}/{name}")
                continue
            numbered.append((int(m.group(1)), Frame(id=f"{key}/{name}", sequence=key)))
        numbered.sort(key=lambda nf: nf[0])
        out.frames += [f for _, f in numbered]
        for a, b in numbered_pairs(numbered):
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
)
