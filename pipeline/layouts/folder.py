"""Any tree of images: each folder that directly holds images is one sequence, in natural order.

No ground truth. Pairs are consecutive frames of a folder in natural sort order (frame2
before frame10), which is how video frames dumped by ffmpeg and friends are numbered. Frames named as
pairs (`<stem>-img0`/`-img1`, `<stem>_img1`/`_img2`, as FlyingChairs names them) pair only with their
own stem's other frame, never across stems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unsamflow.pipeline.layouts.base import Layout, ScanResult, is_image, list_dir
from unsamflow.pipeline.layouts.flyingchairs import PAIR_FRAME
from unsamflow.pipeline.manifest import Frame, Pair


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    out = ScanResult()
    seen: set[Path] = set()  # resolved folders already walked: a symlinked folder is listed once

    def walk(rel: str) -> None:
        real = (root / rel).resolve()
        if real in seen:
            return
        seen.add(real)
        subdirs, names = list_dir(root, rel)
        key = rel or "."
        frames = []
        for name in names:
            rel_id = f"{rel}/{name}" if rel else name
            if is_image(name):
                frames.append(Frame(id=rel_id, sequence=key))
            else:
                out.ignored.append(rel_id)
        out.frames += frames
        out.pairs += [Pair(a.id, b.id) for a, b in zip(frames, frames[1:], strict=False)
                      if _same_pair_stem(a.id, b.id)]  # fmt: skip
        for d in subdirs:
            walk(f"{rel}/{d}" if rel else d)

    walk("")
    return out


def _same_pair_stem(a: str, b: str) -> bool:
    """False for two pair-named frames of different stems (0001-img1 -> 0002-img0); True otherwise."""
    ma, mb = PAIR_FRAME.fullmatch(a.rsplit("/", 1)[-1]), PAIR_FRAME.fullmatch(b.rsplit("/", 1)[-1])
    if ma is None or mb is None:
        return True
    return ma["stem"] == mb["stem"]


LAYOUT = Layout(
    name="folder",
    description="any tree of images; every folder directly holding images is a sequence (natural order)",
    scanner=_scan,
)
