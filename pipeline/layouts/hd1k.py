"""HD1K (the HCI benchmark, as RAFT and ptlflow read it): hd1k_input/image_2/<seq>_<frame>.png, ground
truth of pair frame -> frame+1 in hd1k_flow_gt/flow_occ/<seq>_<frame>.png (KITTI 16-bit PNG)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from unsamflow.pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"(\d{6})_(\d{4})\.png")
_GROUP = "hd1k_input/image_2"


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    if not (root / _GROUP).is_dir():
        out.missing_dirs.append(_GROUP)
        return out
    subdirs, names = list_dir(root, _GROUP)
    out.ignored += [f"{_GROUP}/{d}/" for d in subdirs]
    sequences: dict[str, list[tuple[int, Frame]]] = defaultdict(list)
    for name in names:
        m = _FRAME.fullmatch(name)
        if m is None:
            out.ignored.append(f"{_GROUP}/{name}")
            continue
        sequences[m[1]].append((int(m[2]), Frame(f"{_GROUP}/{name}", f"{_GROUP}/{m[1]}")))
    for seq in sorted(sequences):
        numbered = sorted(sequences[seq], key=lambda nf: nf[0])
        out.frames += [f for _, f in numbered]
        for a, b in numbered_pairs(numbered):
            flow = existing(root, f"hd1k_flow_gt/flow_occ/{Path(a.id).name}")
            out.pairs.append(Pair(a.id, b.id, flow=flow, occ_kind="flow_occ" if flow else None))
    return out


LAYOUT = Layout(
    name="hd1k",
    description="HD1K: hd1k_input/image_2/<seq>_<frame>.png, GT hd1k_flow_gt/flow_occ/ (KITTI PNG)",
    scanner=_scan,
    groups=lambda options: [_GROUP],
)
