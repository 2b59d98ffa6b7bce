"""FlyingChairs: one pair per stem, `<stem>_img1.ppm` + `<stem>_img2.ppm` + `<stem>_flow.flo` (the release's
data/ folder) or `<stem>-img0.*` + `<stem>-img1.*` + `<stem>-gt.flo` (the examples FlowNet ships).

Every pair is its own sequence (a stem's two frames never pair with another stem's), anywhere below the
root. split=train|val follows FlyingChairs_train_val.txt (1 = train, 2 = val, one line per pair in name
order), read from the root as ptlflow does; split=all takes every pair.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts.base import Layout, ScanResult, list_dir
from unsamflow.pipeline.manifest import Frame, Pair

PAIR_FRAME = re.compile(r"(?P<stem>.+?)[-_]img(?P<k>[012])\.(?:ppm|png|jpe?g)", re.IGNORECASE)
_FLOW_NAMES = ("{}_flow.flo", "{}-gt.flo", "{}-flow.flo", "{}_gt.flo")
SPLIT_FILE = "FlyingChairs_train_val.txt"


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    found: list[tuple[str, str, list[str]]] = []  # (folder, stem, [frame ids in order])

    def walk(rel: str) -> None:
        subdirs, names = list_dir(root, rel)
        stems: dict[str, list[tuple[int, str]]] = {}
        files = set(names)
        for name in names:
            m = PAIR_FRAME.fullmatch(name)
            if m is not None:
                stems.setdefault(m["stem"], []).append((int(m["k"]), name))
        used: set[str] = set()
        for stem, frames in stems.items():
            if len(frames) != 2:
                continue
            frames.sort()
            ids = [f"{rel}/{n}" if rel else n for _, n in frames]
            flow = next((f.format(stem) for f in _FLOW_NAMES if f.format(stem) in files), None)
            found.append((rel, stem, [*ids, (f"{rel}/{flow}" if rel else flow) if flow else ""]))
            used.update(n for _, n in frames)
            if flow:
                used.add(flow)
        out.ignored += [f"{rel}/{n}" if rel else n for n in names if n not in used and n != SPLIT_FILE]
        for d in subdirs:
            walk(f"{rel}/{d}" if rel else d)

    walk("")
    keep = _split_filter(root, options["split"], len(found))
    for i, (rel, stem, (a, b, flow)) in enumerate(found):
        if not keep(i):
            continue
        seq = f"{rel}/{stem}" if rel else stem
        out.frames += [Frame(a, seq), Frame(b, seq)]
        out.pairs.append(Pair(a, b, flow=flow or None))
    return out


def _split_filter(root: Path, split: str, n: int):
    if split == "all":
        return lambda i: True
    path = root / SPLIT_FILE
    if not path.is_file():
        raise BadInputError(f"{root}: split={split} needs {SPLIT_FILE} (1 = train, 2 = val per pair) in the "
                            "root; use split=all for every pair")  # fmt: skip
    marks = path.read_text().split()
    if len(marks) != n:
        raise BadInputError(f"{path}: {len(marks)} entries but {n} FlyingChairs pairs were found")
    want = "1" if split == "train" else "2"
    return lambda i: marks[i] == want


LAYOUT = Layout(
    name="flyingchairs",
    description="FlyingChairs: <stem>_img1.ppm,_img2.ppm,_flow.flo (release data/) or "
    "<stem>-img0,-img1,-gt.flo",
    scanner=_scan,
    options={"split": "all"},
    choices={"split": ("all", "train", "val")},
    groups=lambda options: ["data"],
)
