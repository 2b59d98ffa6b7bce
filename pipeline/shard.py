"""Split a manifest into N balanced shards, keeping each sequence's frames together.

A shard is the unit of work of the segment stage (one Dask task, one HDF5 store), so shards
should be the same size, and a sequence should stay in one store where that costs nothing.
The plan:

1. target = ceil(frames / N). Sequences no longer than the target stay whole; longer ones
   are the only ones ever split.
2. Whole sequences are packed largest first into the least-filled shard (LPT), then single
   sequences are moved, or two swapped, from the fullest shard to a lighter one while that
   evens the loads.
3. The long sequences, concatenated in manifest order, are poured into the shards like
   water into vessels: each shard below the common level receives one contiguous run, so a
   long sequence is cut into contiguous chunks and the shard sizes end up as even as the
   whole sequences allow (a spread of at most 1 when long sequences fill the gaps).

Everything is deterministic (ties broken by position in the manifest); shards are numbered
by their first frame's position, and a shard's frames keep manifest order. A shard lists the
pairs whose two frames it holds, so a pair straddling the cut of a long sequence is in none
(masks are per frame; the pair list of a shard is informational).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from unsamflow.pipeline.canonical import canonical_json
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.manifest import Frame, Manifest

SHARD_NAME = "shard-{index:05d}-of-{count:05d}.json"
_MAX_MOVES = 10_000  # bound on rebalancing steps; each one strictly evens the loads
_SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.json")


def manifest_sha256(manifest: Manifest) -> str:
    """Content hash of a manifest, independent of how its file was formatted."""
    text = canonical_json(manifest.to_dict())
    return hashlib.sha256(text.encode()).hexdigest()


def shard_manifest(manifest: Manifest, num_shards: int) -> list[Manifest]:
    """Split into at most `num_shards` non-empty shards (fewer when there are too few frames).

    Every frame lands in exactly one shard; a shard holds the pairs whose two frames it holds.
    """
    if num_shards < 1:
        raise BadInputError(f"num_shards must be at least 1, got {num_shards}")
    frames = manifest.frames
    if not frames:
        raise BadInputError("the manifest has no frames to shard")
    position = {f.id: i for i, f in enumerate(frames)}
    if len(position) != len(frames):
        dup = next(f.id for i, f in enumerate(frames) if position[f.id] != i)
        raise BadInputError(f"the manifest lists frame {dup!r} more than once")

    bins = min(num_shards, len(frames))
    target = math.ceil(len(frames) / bins)
    whole: list[list[Frame]] = []
    long_frames: list[Frame] = []
    for seq in manifest.sequences().values():
        if len(seq) > target:
            long_frames += seq
        else:
            whole.append(seq)

    loads, members = _pack(whole, bins)
    for b, chunk in _pour(loads, long_frames):
        members[b].append(chunk)

    shard_frames = [sorted((f for item in m for f in item), key=lambda f: position[f.id]) for m in members]
    shard_frames = sorted((s for s in shard_frames if s), key=lambda s: position[s[0].id])
    sha = manifest_sha256(manifest)
    out = []
    for i, fs in enumerate(shard_frames):
        ids = {f.id for f in fs}
        pairs = [p for p in manifest.pairs if p.frame1 in ids and p.frame2 in ids]
        meta = {"shard": i, "num_shards": len(shard_frames), "manifest_sha256": sha}
        out.append(Manifest(manifest.layout, manifest.root, fs, pairs, meta))
    return out


def _pack(items: list[list[Frame]], bins: int) -> tuple[list[int], list[list[list[Frame]]]]:
    """LPT packing of whole sequences, then local moves/swaps that even the loads (see _improve)."""
    loads = [0] * bins
    members: list[list[list[Frame]]] = [[] for _ in range(bins)]
    # sorted() is stable, so equal sizes keep manifest order; min() takes the lowest index on ties.
    for item in sorted(items, key=len, reverse=True):
        b = min(range(bins), key=loads.__getitem__)
        members[b].append(item)
        loads[b] += len(item)

    for _ in range(_MAX_MOVES):
        if not _improve(loads, members):
            break
    return loads, members


def _improve(loads: list[int], members: list[list[list[Frame]]]) -> bool:
    """One move (or swap) of whole sequences from the fullest bin that lowers it; False if none.

    A transfer of d frames from a bin to one `gap` frames lighter helps when 0 < d < gap
    (the sum of squared loads drops, so repeated improvements terminate); the d closest to
    gap / 2 is taken. Candidates are looked up by size, as bins may hold thousands of items.
    """
    hi = max(range(len(loads)), key=loads.__getitem__)
    by_size_hi = _first_by_size(members[hi])
    for lo in sorted(range(len(loads)), key=loads.__getitem__):
        gap = loads[hi] - loads[lo]
        if gap <= 1:
            return False
        by_size_lo = _first_by_size(members[lo])
        best = None  # (distance from gap/2, size moved hi->lo, size moved lo->hi)
        for a in by_size_hi:
            for c in (0, *by_size_lo):
                d = a - c
                if 0 < d < gap and (best is None or abs(gap - 2 * d) < best[0]):
                    best = (abs(gap - 2 * d), a, c)
        if best is None:
            continue
        _, a, c = best
        item = members[hi].pop(by_size_hi[a])
        members[lo].append(item)
        if c:
            back = members[lo].pop(by_size_lo[c])
            members[hi].append(back)
        loads[hi] -= a - c
        loads[lo] += a - c
        return True
    return False


def _first_by_size(items: list[list[Frame]]) -> dict[int, int]:
    """size -> index of the first item of that size (sizes in ascending order)."""
    out: dict[int, int] = {}
    for i, item in enumerate(items):
        out.setdefault(len(item), i)
    return dict(sorted(out.items()))


def _pour(loads: list[int], frames: list[Frame]) -> list[tuple[int, list[Frame]]]:
    """Fill the lowest bins up to a common level with contiguous runs of `frames`.

    Returns (bin, run) in bin order; the runs, concatenated, are `frames` in order.
    """
    total = len(frames)
    if not total:
        return []
    # Highest integer level whose filling needs no more than `total` frames.
    lo, hi = min(loads), min(loads) + total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(0, mid - x) for x in loads) <= total:
            lo = mid
        else:
            hi = mid - 1
    give = [max(0, lo - x) for x in loads]
    rest = total - sum(give)
    for b in range(len(loads)):  # one extra frame each to bins at the level, lowest index first
        if rest and loads[b] + give[b] == lo:
            give[b] += 1
            rest -= 1
    out, start = [], 0
    for b, n in enumerate(give):
        if n:
            out.append((b, frames[start : start + n]))
            start += n
    return out


# -- files -------------------------------------------------------------------------------------


@dataclass
class ShardFiles:
    """What write_shards did: all shard paths, and which of them it (re)wrote or removed."""

    paths: list[Path]
    sizes: list[int]  # frames per shard
    split_sequences: int  # sequences spread over more than one shard
    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)


def write_shards(manifest: Manifest, num_shards: int, out_dir: str | Path, force: bool = False,
                 remedy: str = "use --force to replace them, or another directory") -> list[Path]:
    """Write shard-00000-of-0000N.json ... into out_dir; see sync_shards."""
    return sync_shards(manifest, num_shards, out_dir, force=force, remedy=remedy).paths


def sync_shards(manifest: Manifest, num_shards: int, out_dir: str | Path, force: bool = False,
                remedy: str = "use --force to replace them, or another directory") -> ShardFiles:
    """Make out_dir hold exactly the shards of (manifest, num_shards).

    Idempotent: shards already there with the same content are left alone, so a re-run is a
    no-op and an interrupted run is completed. Shard files of another manifest or shard
    count are never overwritten unless `force` (then they are replaced and the extra ones
    removed). `remedy` is what the refusal tells the user to do (each command has its own options).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputError(f"shard output {out_dir} is a file, not a folder")
    shards = shard_manifest(manifest, num_shards)
    wanted = {
        out_dir / SHARD_NAME.format(index=i, count=len(shards)): s.to_dict() for i, s in enumerate(shards)
    }
    present = sorted(p for p in out_dir.glob("shard-*-of-*.json") if _SHARD_RE.fullmatch(p.name))
    stale = [p for p in present if p not in wanted or _read(p) != wanted[p]]
    if stale and not force:
        old = _read(stale[0]) or {}
        old_meta = old.get("meta", {}) if isinstance(old, dict) else {}
        sha = shards[0].meta["manifest_sha256"]
        why = "another shard count" if old_meta.get("manifest_sha256") == sha else "a different manifest"
        raise BadInputError(
            f"{out_dir} already holds shards of {why} ({stale[0].name}); "
            + remedy
        )
    owners: dict[str, set[int]] = {}
    for i, sh in enumerate(shards):
        for f in sh.frames:
            owners.setdefault(f.sequence, set()).add(i)
    result = ShardFiles(
        paths=list(wanted),
        sizes=[len(sh.frames) for sh in shards],
        split_sequences=sum(len(o) > 1 for o in owners.values()),
    )
    for shard, path in zip(shards, wanted, strict=True):
        if path not in present or path in stale:
            shard.save(path)
            result.written.append(path)
    for path in stale:
        if path not in wanted:
            path.unlink()
            result.removed.append(path)
    return result


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale
