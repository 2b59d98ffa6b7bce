"""KITTI raw (synced + rectified) and ARFlow's raw Sintel frames: the unlabelled first phase of the
reference recipes (`kitti-raw`, then the KITTI multi-view sets; `sintel-raw`, then Sintel training).

kitti-raw: <date>/<date>_drive_<NNNN>_sync/image_02|image_03/data/<10 digits>.png, as
raw_data_downloader.sh unpacks it. One sequence per drive and camera, consecutive frames paired. When
the root holds the reference's pair list (`kitti_train_2f_sv.txt`: per line one pair, or a left and a
right pair, as paths relative to the root; the reference leaves out drives that overlap the flow
benchmarks), only its pairs are taken; `list=` names another file, `list=none` takes every pair.

sintel-raw: <scene>/*.png, one folder of frames per scene extracted from the Sintel movie, consecutive
frames paired (ARFlow's SintelRaw).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts.base import Layout, ScanResult, list_dir
from unsamflow.pipeline.manifest import Frame, Pair, check_relative

_DATE = re.compile(r"\d{4}_\d{2}_\d{2}")
_DRIVE = re.compile(r"\d{4}_\d{2}_\d{2}_drive_\d{4}_sync")
_FRAME = re.compile(r"\d{10}\.png")
CAMERAS = ("image_02", "image_03")
REFERENCE_LIST = "kitti_train_2f_sv.txt"


def _scan_kitti(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    dates, stray = list_dir(root, "")
    out.ignored += [n for n in stray if n != REFERENCE_LIST and n != options["list"]]
    for date in dates:
        if not _DATE.fullmatch(date):
            out.ignored.append(f"{date}/")
            continue
        drives, files = list_dir(root, date)  # calib_*.txt sit beside the drives
        out.ignored += [f"{date}/{d}/" for d in drives if not _DRIVE.fullmatch(d)]
        for drive in (d for d in drives if _DRIVE.fullmatch(d)):
            for cam in options["cameras"]:
                folder = f"{date}/{drive}/{cam}/data"
                if not (root / folder).is_dir():
                    out.missing_dirs.append(folder)
                    continue
                names = [n for n in list_dir(root, folder)[1] if _FRAME.fullmatch(n)]
                frames = [Frame(f"{folder}/{n}", f"{date}/{drive}/{cam}") for n in names]
                out.frames += frames
                out.pairs += [Pair(a.id, b.id) for a, b in zip(frames, frames[1:], strict=False)
                              if int(b.id[-14:-4]) == int(a.id[-14:-4]) + 1]  # fmt: skip
    listed = options["list"] or (REFERENCE_LIST if (root / REFERENCE_LIST).is_file() else "none")
    if listed != "none":
        out.pairs = _listed_pairs(root / listed, {f.id for f in out.frames})
    return out


def _listed_pairs(path: Path, frames: set[str]) -> list[Pair]:
    """The pairs of a reference-style list: 2 or 4 paths per line (a pair, or a left and a right pair)."""
    if not path.is_file():
        raise BadInputError(f"kitti-raw pair list {path} not found (list=none takes every consecutive pair)")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) not in (2, 4):
            raise BadInputError(f"{path} line {n}: {len(cols)} paths; expected 2 (a pair) or 4 (two pairs)")
        for a, b in zip(cols[::2], cols[1::2], strict=True):
            for rel in (a, b):
                check_relative(rel, f"{path} line {n}")
                if rel not in frames:
                    raise BadInputError(f"{path} line {n}: {rel!r} is not a frame of this KITTI raw tree "
                                        "(missing drive or camera?)")  # fmt: skip
            pairs.append(Pair(a, b))
    return pairs


def _scan_sintel_raw(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    scenes, stray = list_dir(root, "")
    out.ignored += stray
    for scene in scenes:
        subdirs, names = list_dir(root, scene)
        out.ignored += [f"{scene}/{d}/" for d in subdirs]
        out.ignored += [f"{scene}/{n}" for n in names if not n.endswith(".png")]
        frames = [Frame(f"{scene}/{n}", scene) for n in names if n.endswith(".png")]  # natural order
        out.frames += frames
        out.pairs += [Pair(a.id, b.id) for a, b in zip(frames, frames[1:], strict=False)]
    return out


KITTI_RAW = Layout(
    name="kitti-raw",
    description="KITTI raw: <date>/<date>_drive_NNNN_sync/image_02|03/data/NNNNNNNNNN.png (pairs from "
    f"{REFERENCE_LIST} when present)",
    scanner=_scan_kitti,
    options={"cameras": list(CAMERAS), "list": ""},
    choices={"cameras": CAMERAS},
    groups=lambda options: [],
)

SINTEL_RAW = Layout(
    name="sintel-raw",
    description="Sintel raw movie frames (ARFlow): <scene>/*.png, consecutive frames paired",
    scanner=_scan_sintel_raw,
)
