"""KITTI flow 2015 and 2012: <split>/<image dir>/<scene>_<frame>.png, one sequence per scene.

The benchmark pair of scene s is s_10 -> s_11, with ground truth in flow_occ/s_10.png (all
pixels) and/or flow_noc/s_10.png (non-occluded only); flow_occ is preferred. The multi-view
download adds frames s_00 .. s_20 to the same folder: every frame is listed and paired with
its successor, and only 10 -> 11 has ground truth.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, existing, list_dir, numbered_pairs
from unsamflow.pipeline.manifest import Frame, Pair

_FRAME = re.compile(r"(\d{6})_(\d{2})\.png")
_BENCHMARK_FRAMES = (10, 11)

Scanner = Callable[[Path, dict[str, Any]], ScanResult]
GroupsFn = Callable[[dict[str, Any]], list[str]]


def _image_dir_2015(options: dict[str, Any]) -> str:
    return "image_2"


def _image_dir_2012(options: dict[str, Any]) -> str:
    return "image_0" if options["gray"] else "colored_0"


def _make_scanner(image_dir: Callable[[dict[str, Any]], str]) -> tuple[Scanner, GroupsFn]:
    """The scan and groups functions of a KITTI flavour whose frames live in image_dir(options)."""

    def groups(options: dict[str, Any]) -> list[str]:
        return [f"{options['split']}/{image_dir(options)}"]

    def scan(root: Path, options: dict[str, Any]) -> ScanResult:
        split, multiview = options["split"], options["multiview"]
        (group,) = groups(options)
        out = ScanResult()
        if not (root / group).is_dir():
            out.missing_dirs.append(group)
            return out
        subdirs, names = list_dir(root, group)
        out.ignored += [f"{group}/{d}/" for d in subdirs]
        scenes: dict[str, list[tuple[int, Frame]]] = defaultdict(list)
        for name in names:
            m = _FRAME.fullmatch(name)
            if m is None or (not multiview and int(m.group(2)) not in _BENCHMARK_FRAMES):
                out.ignored.append(f"{group}/{name}")
                continue
            scene, index = m.group(1), int(m.group(2))
            scenes[scene].append((index, Frame(id=f"{group}/{name}", sequence=f"{group}/{scene}")))
        for scene in sorted(scenes):
            numbered = sorted(scenes[scene], key=lambda nf: nf[0])
            out.frames += [f for _, f in numbered]
            for a, b in numbered_pairs(numbered):
                flow, kind = None, None
                if a.id.endswith("_10.png") and b.id.endswith("_11.png"):
                    for kind in ("flow_occ", "flow_noc"):
                        flow = existing(root, f"{split}/{kind}/{scene}_10.png")
                        if flow:
                            break
                out.pairs.append(Pair(a.id, b.id, flow=flow, occ_kind=kind if flow else None))
        return out

    return scan, groups


_scan_2015, _groups_2015 = _make_scanner(_image_dir_2015)
_scan_2012, _groups_2012 = _make_scanner(_image_dir_2012)

KITTI2015 = Layout(
    name="kitti2015",
    description="KITTI 2015: training|testing/image_2/%06d_10.png,_11.png; GT flow_occ/ or flow_noc/",
    scanner=_scan_2015,
    options={"split": "training", "multiview": False},
    choices={"split": ("training", "testing")},
    groups=_groups_2015,
    has_counts=True,
)

KITTI2012 = Layout(
    name="kitti2012",
    description="KITTI 2012: training|testing/colored_0 (gray: image_0)/%06d_10.png,_11.png; GT flow_occ|noc",
    scanner=_scan_2012,
    options={"split": "training", "multiview": False, "gray": False},
    choices={"split": ("training", "testing")},
    groups=_groups_2012,
    has_counts=True,
)
