"""Integrity and completeness of a store directory against the manifest it was made from.

Every problem becomes one line naming the shard and/or frame; nothing raises for a bad store, so one
run lists everything that is wrong. Bad pairs of the manifest (a recorded bad frame, or frames of
different sizes) are reported too: `bad_pairs` holds them all, and the lines name the size mismatches
(a pair with a bad frame is already named by that frame's line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from unsamflow.pipeline.errors import BadInputError, StoreError
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.store import FrameMasks, MaskStore
from unsamflow.pipeline.store.codec import tight_box
from unsamflow.pipeline.store.index import check_same_producer, find_bad_pairs, store_files


@dataclass
class VerifyReport:
    ok: bool
    lines: list[str] = field(default_factory=list)  # one per problem; bad frames first
    counts: dict[str, int] = field(default_factory=dict)
    bad_frames: dict[str, str] = field(default_factory=dict)
    bad_pairs: dict[tuple[str, str], str] = field(default_factory=dict)  # (frame1, frame2) -> reason
    only_bad_frames: bool = False  # every problem is a recorded bad frame or bad pair (a run may skip them)

    def summary(self) -> str:
        c = self.counts
        head = (f"{'ok' if self.ok else 'NOT OK'}: {c.get('shards', 0)} shards, {c.get('frames', 0)} frames, "
                f"{c.get('masks', 0)} masks, {c.get('bad', 0)} bad frames, {len(self.bad_pairs)} bad pairs, "
                f"{c.get('problems', 0)} problems")
        return "\n".join([head, *self.lines])


def bbox_consistent(bbox: np.ndarray, mask: np.ndarray) -> bool:
    """XYWH bbox matches the mask's extent, in either convention (w = x_max - x_min, as SAM
    writes it, or the pixel count x_max - x_min + 1); an empty mask has an all-zero bbox."""
    ty, tx, th, tw = tight_box(mask)
    if th == 0:
        return not np.any(bbox)
    x, y, w, h = (int(v) for v in bbox)
    return x == tx and y == ty and w in (tw - 1, tw) and h in (th - 1, th)


def check_frame(fm: FrameMasks) -> list[str]:
    """Problems of one decoded frame (empty when consistent)."""
    out = []
    n = len(fm.area)
    where = f"frame {fm.frame_id!r}"
    if fm.masks.shape != (n, *fm.image_shape):
        out.append(f"{where}: masks shape {fm.masks.shape} != {(n, *fm.image_shape)}")
        return out
    sums = fm.masks.reshape(n, -1).sum(axis=1) if n else np.zeros(0, np.int64)
    for i in np.flatnonzero(sums != fm.area):
        out.append(f"{where}, mask {i}: stored area {fm.area[i]} != {sums[i]} decoded pixels")
    for i in range(n):
        if not bbox_consistent(fm.bbox[i], fm.masks[i]):
            out.append(f"{where}, mask {i}: bbox {fm.bbox[i].tolist()} does not match the mask's extent")
    if fm.full_seg.shape != fm.image_shape:
        out.append(f"{where}: full_seg shape {fm.full_seg.shape} != image shape {fm.image_shape}")
    elif fm.full_seg.size and int(fm.full_seg.max()) > n:
        out.append(f"{where}: full_seg label {int(fm.full_seg.max())} out of range 0..{n} ({n} masks)")
    k = fm.key_objects
    if k.size and (k.min() < 0 or k.max() >= n):
        out.append(f"{where}: key-object indices {k.tolist()} out of range 0..{n - 1}")
    if len(np.unique(k)) != k.size:
        out.append(f"{where}: repeated key-object indices {k.tolist()}")
    return out


def verify(store_dir: str | Path, manifest: Manifest, check_hashes: bool = True,
           progress: bool = True) -> VerifyReport:
    """Check every store in `store_dir` and that together they hold each manifest frame exactly once."""
    store_dir = Path(store_dir)
    problems: list[str] = []
    bad: dict[str, str] = {}
    seen: dict[str, list[str]] = {}  # frame id -> stores holding it (as a row or as a bad frame)
    rows: dict[str, str] = {}  # frame id -> sha256 stored, for good rows
    shapes: dict[str, tuple[int, int]] = {}  # frame id -> (H, W) stored, for good rows
    counts = {"shards": 0, "frames": 0, "masks": 0, "bad": 0}
    try:
        files = store_files(store_dir)
    except StoreError as exc:
        files = []
        problems.append(str(exc))
    if not files and not problems:
        problems.append(f"no mask stores (*.h5) in {store_dir}")
    ref: tuple[str, MaskStore] | None = None
    bar = tqdm(desc="verify masks", unit="frame", disable=not progress)
    for path in files:
        counts["shards"] += 1
        store = MaskStore(path)
        try:
            ids = store.frame_ids
            store_bad = store.bad_frames
            if ref is None:
                ref = (path.name, store)
            else:
                diff = check_same_producer(ref[0], ref[1], path.name, store)
                if diff:
                    problems.append(diff)
        except StoreError as exc:
            problems.append(f"shard {path.name}: cannot open ({exc})")
            continue
        for fid, reason in store_bad.items():
            seen.setdefault(fid, []).append(path.name)
            bad[fid] = reason
        for row, fid in enumerate(ids):
            seen.setdefault(fid, []).append(path.name)
            try:
                fm = store.read(row)
            except (StoreError, OSError, ValueError, IndexError) as exc:
                problems.append(f"shard {path.name}, frame {fid!r}: cannot decode ({exc})")
                bar.update(1)
                continue
            rows[fid] = fm.sha256
            shapes[fid] = fm.image_shape
            counts["frames"] += 1
            counts["masks"] += len(fm.area)
            problems.extend(f"shard {path.name}, {p}" for p in check_frame(fm))
            bar.update(1)
        if ref is None or ref[1] is not store:
            store.close()
    bar.close()
    if ref is not None:
        ref[1].close()
    counts["bad"] = len(bad)

    wanted = set(manifest.frame_ids)
    for fid in manifest.frame_ids:
        holders = seen.get(fid, [])
        if not holders:
            problems.append(f"missing frame {fid!r}: in the manifest, in no store")
        elif len(holders) > 1:
            problems.append(f"frame {fid!r} is stored {len(holders)} times: {', '.join(holders)}")
    for fid in sorted(set(seen) - wanted):
        problems.append(f"extra frame {fid!r} in {', '.join(seen[fid])}: not in the manifest")

    if check_hashes:
        problems.extend(_check_hashes(manifest, {f: s for f, s in rows.items() if f in wanted}, progress))

    bad_pairs = find_bad_pairs(manifest.pairs, shapes, bad)
    bad_lines = [f"bad frame {fid!r}: {reason}" for fid, reason in sorted(bad.items())]
    bad_lines += [f"bad pair {a!r} -> {b!r}: {reason}" for (a, b), reason in bad_pairs.items()
                  if a not in bad and b not in bad]
    counts["problems"] = len(problems) + len(bad_lines)
    return VerifyReport(
        ok=not problems and not bad_lines,
        lines=bad_lines + problems,
        counts=counts,
        bad_frames=bad,
        bad_pairs=bad_pairs,
        only_bad_frames=bool(bad_lines) and not problems,
    )


def _check_hashes(manifest: Manifest, stored: dict[str, str], progress: bool) -> list[str]:
    out = []
    for fid in tqdm(sorted(stored), desc="hash sources", unit="frame", disable=not progress):
        try:
            path = manifest.path(fid)
            now = file_sha256(path)
        except BadInputError as exc:
            out.append(f"frame {fid!r}: {exc}")
            continue
        except OSError as exc:
            reason = exc.strerror or exc
            out.append(f"frame {fid!r}: cannot read source image under {manifest.root} ({reason})")
            continue
        if now != stored[fid]:
            out.append(f"frame {fid!r}: source image changed since it was segmented "
                       f"(stored sha256 {stored[fid][:12]}..., file now {now[:12]}...)")
    return out
