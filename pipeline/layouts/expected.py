"""Compare a scanned manifest with the checked-in counts of data_manifests/<layout>.yaml.

An incomplete download (a missing sequence, a truncated unzip) should stop the pipeline at
the manifest stage, not after hours of segmentation. Each YAML file lists `expected`
entries; an entry applies to the groups (folders holding sequences, e.g. training/clean)
it names, when the manifest's options match its optional `when`. Only the fields an entry
gives are checked:

    sequences, frames, pairs, pairs_with_gt, sequences_with_gt   exact counts
    sequence_frames: {name: frames}   exact set of sequences with their frame counts
    sequence_names: [name, ...]       sequences that must be present (others allowed)
"""

from __future__ import annotations

import sys
from collections import Counter
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import yaml
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts.base import group_of
from unsamflow.pipeline.manifest import Manifest

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11 (mypy's python_version 3.10 found it)
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

# The repository's data_manifests/ is package data of `unsamflow` (pyproject.toml), so this is the same
# folder in a source checkout, an editable install and a wheel.
DATA_MANIFESTS: Traversable = files("unsamflow") / "data_manifests"
COUNT_FIELDS = ("sequences", "frames", "pairs", "pairs_with_gt", "sequences_with_gt")
ENTRY_FIELDS = {"groups", "when", "note", "sequence_frames", "sequence_names", *COUNT_FIELDS}
_MAX_NAMES = 20


@cache
def expected_for(layout: str) -> dict[str, Any] | None:
    """The parsed data_manifests/<layout>.yaml, or None when the layout has no known counts.

    A standard layout (`Layout.has_counts`) without its file is an error, never a silent pass: it
    means a broken installation, and the completeness check is what stops a partial download
    before GPU hours are spent on it.
    """
    from unsamflow.pipeline.layouts import LAYOUTS  # the registry imports this module

    path = DATA_MANIFESTS / f"{layout}.yaml"
    if not path.is_file():
        known = LAYOUTS.get(layout)
        if known is not None and known.has_counts:
            raise BadInputError(
                f"the expected counts of the {layout!r} layout ({path}) are missing from this installation "
                "of unsamflow, so an incomplete download could not be detected; reinstall unsamflow"
            )
        return None
    data = yaml.safe_load(path.read_text())
    for i, entry in enumerate(data.get("expected", [])):
        unknown = set(entry) - ENTRY_FIELDS
        if unknown or "groups" not in entry:
            raise BadInputError(f"{path}: expected[{i}] needs 'groups'; unknown fields: {sorted(unknown)}")
    return data


def check_expected(manifest: Manifest) -> list[str]:
    """Human-readable lines, one per group whose counts differ from the dataset's known counts.

    [] when everything matches or nothing is known about the layout (e.g. `folder`).
    """
    from unsamflow.pipeline.layouts import get_layout  # the registry imports this module

    data = expected_for(manifest.layout)
    if not data:
        return []
    options = manifest.meta.get("options", {})
    selected = get_layout(manifest.layout).groups(options)
    stats = _group_stats(manifest)
    lines = []
    for entry in data.get("expected", []):
        when = entry.get("when", {})
        if any(options.get(k) != v for k, v in when.items()):
            continue
        variant = "".join(f" ({k})" for k, v in when.items() if v is True)
        for group in entry["groups"]:
            if group not in selected:
                continue
            problems = _compare(entry, stats.get(group, _Stats()))
            if problems:
                lines.append(f"{manifest.layout} {group}{variant}: " + "; ".join(problems))
    return lines


class _Stats:
    def __init__(self) -> None:
        self.frames: Counter[str] = Counter()  # sequence name -> frames
        self.pairs = 0
        self.pairs_with_gt = 0
        self.gt_sequences: set[str] = set()

    def counts(self) -> dict[str, int]:
        return {
            "sequences": len(self.frames),
            "frames": sum(self.frames.values()),
            "pairs": self.pairs,
            "pairs_with_gt": self.pairs_with_gt,
            "sequences_with_gt": len(self.gt_sequences),
        }


def _group_stats(manifest: Manifest) -> dict[str, _Stats]:
    stats: dict[str, _Stats] = {}
    seq_of = {}
    for f in manifest.frames:
        seq_of[f.id] = f.sequence
        s = stats.setdefault(group_of(f.sequence), _Stats())
        s.frames[f.sequence.rsplit("/", 1)[-1]] += 1
    for p in manifest.pairs:
        seq = seq_of.get(p.frame1)
        if seq is None:
            continue
        s = stats[group_of(seq)]
        s.pairs += 1
        if p.flow is not None:
            s.pairs_with_gt += 1
            s.gt_sequences.add(seq.rsplit("/", 1)[-1])
    return stats


def _compare(entry: dict[str, Any], stats: _Stats) -> list[str]:
    found = stats.counts()
    exp = {k: entry[k] for k in COUNT_FIELDS if k in entry}
    off = {k for k, v in exp.items() if found[k] != v}
    problems = []
    if off & {"frames", "sequences"}:
        if "frames" in exp and "sequences" in exp:
            problems.append(
                f"expected {exp['frames']} frames in {exp['sequences']} sequences, "
                f"found {found['frames']} frames in {found['sequences']} sequences"
            )
        else:
            key = "frames" if "frames" in exp else "sequences"
            problems.append(f"expected {exp[key]} {key}, found {found[key]}")
    for key, label in (
        ("pairs", "pairs"),
        ("pairs_with_gt", "pairs with ground truth"),
        ("sequences_with_gt", "sequences with ground truth"),
    ):
        if key in off:
            problems.append(f"expected {exp[key]} {label}, found {found[key]}")
    seq_frames: dict[str, int] = entry.get("sequence_frames") or {}
    required = list(seq_frames) + [n for n in entry.get("sequence_names", []) if n not in seq_frames]
    missing = [n for n in required if n not in stats.frames]
    if missing:
        problems.append(f"missing sequences: {_names(missing)}")
    if seq_frames:
        short = [f"{n} {stats.frames[n]}/{c}" for n, c in seq_frames.items() if 0 < stats.frames[n] != c]
        if short:
            problems.append(f"sequences with other frame counts (found/expected): {_names(short)}")
        extra = sorted(n for n in stats.frames if n not in seq_frames)
        if extra:
            problems.append(f"unexpected sequences: {_names(extra)}")
    return problems


def _names(names: list[str]) -> str:
    more = len(names) - _MAX_NAMES
    return ", ".join(names[:_MAX_NAMES]) + (f" (+{more} more)" if more > 0 else "")
