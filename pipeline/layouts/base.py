"""What every layout scanner shares: the Layout record, safe directory listing, natural order.

A scanner only knows its dataset's tree. It lists directories through `list_dir`, which
skips hidden entries and gives ids relative to the root (never absolute, never with '..'), so no
scanner can hand a later stage an id that climbs out of the root; symlinks inside it are followed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.manifest import Frame, Pair, check_relative, safe_join

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp"})

_DIGITS = re.compile(r"(\d+)")


@dataclass
class ScanResult:
    """What a scanner found; `scan()` turns it into a Manifest with counts in its meta."""

    frames: list[Frame] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files present but not part of the layout
    missing_dirs: list[str] = field(default_factory=list)  # selected folders that do not exist


@dataclass(frozen=True)
class Layout:
    """A dataset tree format.

    `options` holds every option the layout takes with its default; `scanner(root, options)`
    gets the full, validated option dict. `groups(options)` names the folders (relative to
    the root) whose sub-folders are the sequences selected by those options; expected counts
    in data_manifests/ are given per group. `has_counts`: a standard dataset whose expected counts
    ship in data_manifests/<name>.yaml; the manifest stage refuses to run without that file.
    """

    name: str
    description: str
    scanner: Callable[[Path, dict[str, Any]], ScanResult]
    options: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    groups: Callable[[dict[str, Any]], list[str]] = lambda options: []
    has_counts: bool = False
    # a layout whose root may be a file (a pair list): its folder becomes the root, its name this option
    file_root_option: str | None = None


def natural_key(name: str) -> tuple:
    """Sort key putting frame2 before frame10; the raw name breaks ties so order is total."""
    parts = _DIGITS.split(name)
    return (tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name)


def group_of(sequence: str) -> str:
    """'training/clean/alley_1' -> 'training/clean' (the folder holding the sequence)."""
    return sequence.rsplit("/", 1)[0] if "/" in sequence else ""


def list_dir(root: Path, rel: str) -> tuple[list[str], list[str]]:
    """(sub-directory names, file names) of root/rel, hidden entries skipped, naturally sorted.

    Symlinks are followed wherever they lead (data linked in from another disk is the everyday case);
    ids stay relative to the root. A missing folder gives two empty lists.
    """
    base = root / rel if rel else root
    dirs: list[str] = []
    files: list[str] = []
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return dirs, files
    except NotADirectoryError:
        raise BadInputError(f"{base} is a file; the layout expects a folder there") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        rel_id = f"{rel}/{entry.name}" if rel else entry.name
        if "\\" in entry.name:  # ids are POSIX paths; a manifest holding one could not be loaded
            raise BadInputError(f"{base / entry.name}: names with a backslash are not supported")
        check_relative(rel_id, str(root))
        if entry.is_dir():
            dirs.append(entry.name)
        elif entry.is_file():
            files.append(entry.name)
    dirs.sort(key=natural_key)
    files.sort(key=natural_key)
    return dirs, files


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def numbered_pairs(frames: list[tuple[int, Frame]]) -> list[tuple[Frame, Frame]]:
    """Consecutive pairs of numbered frames; a gap in the numbering breaks the chain.

    Pairing across a gap (frame 2 -> frame 4) would attach frame 2's ground truth to the
    wrong second frame, so numbered layouts pair only n -> n+1.
    """
    ordered = sorted(frames, key=lambda nf: nf[0])
    return [(a, b) for (na, a), (nb, b) in zip(ordered, ordered[1:], strict=False) if nb == na + 1]


def numbered_sequences(
    root: Path, group: str, frame: re.Pattern[str], out: ScanResult
) -> Iterator[tuple[str, list[tuple[Frame, Frame]]]]:
    """(sequence folder name, consecutive frame pairs) for each sequence folder of root/group.

    For layouts whose sequences are folders of numbered frames (`frame` matches a file name
    and captures its number). Frames are added to out.frames in number order; stray files in
    the group and non-matching names in a sequence go to out.ignored, and a missing group to
    out.missing_dirs. The caller attaches each pair's ground truth.
    """
    if not (root / group).is_dir():
        out.missing_dirs.append(group)
        return
    sequences, stray = list_dir(root, group)
    out.ignored += [f"{group}/{name}" for name in stray]
    for seq in sequences:
        key = f"{group}/{seq}"
        numbered: list[tuple[int, Frame]] = []
        for name in list_dir(root, key)[1]:
            m = frame.fullmatch(name)
            if m is None:
                out.ignored.append(f"{key}/{name}")
                continue
            numbered.append((int(m.group(1)), Frame(id=f"{key}/{name}", sequence=key)))
        numbered.sort(key=lambda nf: nf[0])
        out.frames += [f for _, f in numbered]
        yield seq, numbered_pairs(numbered)


def existing(root: Path, rel: str) -> str | None:
    """rel if root/rel is a file (inside the root), else None: GT is listed only when present."""
    return rel if (root / rel).is_file() and safe_join(root, rel) else None
