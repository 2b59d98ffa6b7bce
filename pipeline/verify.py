"""Integrity and completeness of a store directory against the manifest it was made from.

Every problem becomes one line naming the shard and/or frame; nothing raises for a bad store, so one
run lists everything that is wrong. A store is first checked against its checksum sidecar (see
store.integrity): a corrupt or unverifiable one is named and never opened, so HDF5 never parses
damaged bytes here. Each store's recorded provenance (manifest sha256, dataset root) must match the
manifest, and an `index.json` in the directory must agree with the stores row by row. Bad pairs of
the manifest (a recorded bad frame, or frames of different sizes) are reported too: `bad_pairs`
holds them all, and the lines name the size mismatches (a pair with a bad frame is already named by
that frame's line). `bad_shards` names every store with a problem: what `segment --repair` redoes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from unsamflow.pipeline.errors import BadInputError, StoreError
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.progress import bar_disable
from unsamflow.pipeline.shard import manifest_sha256
from unsamflow.pipeline.store import FrameMasks, MaskStore
from unsamflow.pipeline.store.codec import tight_boxes
from unsamflow.pipeline.store.index import (
    INDEX_NAME,
    Index,
    as_corrupt,
    check_same_producer,
    find_bad_pairs,
    store_files,
)
from unsamflow.pipeline.store.integrity import check_store_file

MAX_INDEX_LINES = 10  # a wrong index.json is usually wrong everywhere: name the first few rows


@dataclass
class VerifyReport:
    ok: bool
    lines: list[str] = field(default_factory=list)  # one per problem; bad frames first
    counts: dict[str, int] = field(default_factory=dict)
    bad_frames: dict[str, str] = field(default_factory=dict)
    bad_pairs: dict[tuple[str, str], str] = field(default_factory=dict)  # (frame1, frame2) -> reason
    only_bad_frames: bool = False  # every problem is a recorded bad frame or bad pair (a run may skip them)
    bad_shards: dict[str, str] = field(default_factory=dict)  # store file -> its first problem (--repair)

    def to_dict(self) -> dict:
        """For `--json`: ok, counts, problem lines, bad frames/pairs/shards."""
        return {"ok": self.ok, "counts": dict(self.counts), "problems": list(self.lines),
                "bad_frames": dict(self.bad_frames),
                "bad_pairs": [{"frame1": a, "frame2": b, "reason": r}
                              for (a, b), r in self.bad_pairs.items()],
                "bad_shards": dict(self.bad_shards), "only_bad_frames": self.only_bad_frames}

    def summary(self) -> str:
        c = self.counts
        head = (f"{'ok' if self.ok else 'NOT OK'}: {c.get('shards', 0)} shards, {c.get('frames', 0)} frames, "
                f"{c.get('masks', 0)} masks, {c.get('bad', 0)} bad frames, {len(self.bad_pairs)} bad pairs, "
                f"{c.get('problems', 0)} problems")
        return "\n".join([head, *self.lines])


def bboxes_consistent(bbox: np.ndarray, extents: np.ndarray) -> np.ndarray:
    """Per mask: does its XYWH bbox match its tight (y, x, h, w) extent, in either convention (w = x_max -
    x_min, as SAM writes it, or the pixel count x_max - x_min + 1)? An empty mask has an all-zero bbox."""
    bbox = np.asarray(bbox, np.int64).reshape(-1, 4)
    ty, tx, th, tw = np.asarray(extents, np.int64).reshape(-1, 4).T
    x, y, w, h = bbox.T
    inside = (x == tx) & (y == ty) & ((w == tw - 1) | (w == tw)) & ((h == th - 1) | (h == th))
    return np.where(th == 0, ~bbox.any(axis=1), inside)


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
    for i in np.flatnonzero(~bboxes_consistent(fm.bbox, tight_boxes(fm.masks))) if n else ():
        out.append(f"{where}, mask {i}: bbox {fm.bbox[i].tolist()} does not match the mask's extent")
    H, W = fm.image_shape
    pts = np.asarray(fm.point_coords, np.float64).reshape(-1, 2)
    x, y = pts.T
    for i in np.flatnonzero(~np.isfinite(pts).all(axis=1) | (x < 0) | (x > W) | (y < 0) | (y > H)):
        out.append(f"{where}, mask {i}: point {pts[i].tolist()} is outside the {H}x{W} (HxW) image")
    cx, cy, cw, ch = np.asarray(fm.crop_box, np.int64).reshape(-1, 4).T
    for i in np.flatnonzero((cx < 0) | (cy < 0) | (cw < 0) | (ch < 0) | (cx + cw > W) | (cy + ch > H)):
        out.append(f"{where}, mask {i}: crop box {fm.crop_box[i].tolist()} is outside the {H}x{W} image")
    scores = np.stack([np.asarray(fm.predicted_iou, np.float64), np.asarray(fm.stability_score, np.float64)])
    for i in np.flatnonzero(~np.isfinite(scores).all(axis=0)):
        out.append(f"{where}, mask {i}: score not finite ({scores[:, i].tolist()})")
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


def provenance_difference(name: str, source: dict, *, manifest_sha: str | None, root: str | None,
                          stored_ids: set[str] | None = None, frame_ids: list[str] | None = None
                          ) -> str | None:
    """"shard X is stale: ..." naming what differs between a store's recorded provenance (`source`
    attribute: manifest_sha256, root; the ids it holds) and the manifest or shard it should come from;
    None when nothing recorded differs (a store that records no manifest hash is not judged on it)."""
    diffs = []
    got_sha = source.get("manifest_sha256")
    if manifest_sha and got_sha and got_sha != manifest_sha:
        diffs.append(f"manifest sha256 {got_sha[:12]}... (this one: {manifest_sha[:12]}...)")
    got_root = source.get("root")
    if root and got_root and os.path.normpath(str(got_root)) != os.path.normpath(str(root)):
        diffs.append(f"dataset root {got_root!r} (this one: {root!r})")
    if stored_ids is not None and frame_ids is not None and stored_ids != set(frame_ids):
        extra, missing = sorted(stored_ids - set(frame_ids)), sorted(set(frame_ids) - stored_ids)
        what = []
        if extra:
            what.append(f"{len(extra)} frames not in the shard (e.g. {extra[0]!r})")
        if missing:
            what.append(f"{len(missing)} of the shard's frames absent (e.g. {missing[0]!r})")
        diffs.append("frame ids: " + ", ".join(what))
    if not diffs:
        return None
    return f"shard {name} is stale: it was made from other input: " + "; ".join(diffs)


@dataclass
class FrameScan:
    """What reading every frame of one store found (see read_frames)."""

    problems: list[str] = field(default_factory=list)
    sha: dict[str, str] = field(default_factory=dict)  # frame id -> stored source sha256
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    masks: int = 0


def read_frames(store: MaskStore, bar=None) -> FrameScan:
    """Decode and check every frame of an opened store; each problem a line naming shard and frame."""
    out = FrameScan()
    name = store.path.name
    frames = store.scan()
    for row, fid in enumerate(store.frame_ids):
        out.rows[fid] = row
        try:
            fm = next(frames)
        except Exception as exc:  # any decoding failure of a damaged store, named, never raised
            out.problems.append(f"shard {name}, frame {fid!r}: cannot decode ({exc})")
            frames = _rest(store, row + 1)  # a failed generator is finished: go on frame by frame
        else:
            out.sha[fid] = fm.sha256
            out.shapes[fid] = fm.image_shape
            out.masks += len(fm.area)
            out.problems.extend(f"shard {name}, {p}" for p in check_frame(fm))
        if bar is not None:
            bar.update(1)
    return out


def _rest(store: MaskStore, first: int):
    """Frames from row `first` on, one read each (after a damaged block stopped store.scan())."""
    for row in range(first, len(store.frame_ids)):
        yield store.read(row)


def verify(store_dir: str | Path, manifest: Manifest, check_hashes: bool = True,
           progress: bool = True) -> VerifyReport:
    """Check every store in `store_dir` and that together they hold each manifest frame exactly once.

    check_hashes=False (`--no-hash`) re-hashes only the sources modified after their store was written."""
    store_dir = Path(store_dir)
    problems: list[str] = []
    bad_shards: dict[str, str] = {}
    bad: dict[str, str] = {}
    seen: dict[str, list[str]] = {}  # frame id -> stores holding it (as a row or as a bad frame)
    rows: dict[str, str] = {}  # frame id -> sha256 stored, for good rows
    shapes: dict[str, tuple[int, int]] = {}  # frame id -> (H, W) stored, for good rows
    located: dict[str, tuple[str, int]] = {}  # frame id -> (store file, row), for the index check
    sidecars: dict[str, str] = {}  # store file -> sha256 recorded at commit
    mtimes: dict[str, int] = {}  # store file -> st_mtime_ns (for --no-hash: sources newer than it)
    counts = {"shards": 0, "frames": 0, "masks": 0, "bad": 0}
    try:
        files = store_files(store_dir)
    except StoreError as exc:
        files = []
        problems.append(str(exc))
    if not files and not problems:
        problems.append(f"no mask stores (*.h5) in {store_dir}")
    want_sha = manifest_sha256(manifest)
    ref: tuple[str, MaskStore] | None = None
    bar = tqdm(desc="verify masks", unit="frame", disable=bar_disable(progress))

    def shard_problem(name: str, line: str) -> None:
        problems.append(line)
        bad_shards.setdefault(name, line)

    for path in files:
        counts["shards"] += 1
        try:
            sidecars[path.name] = check_store_file(path)["sha256"]  # before HDF5 parses a byte of it
        except StoreError as exc:
            shard_problem(path.name, str(exc))
            continue
        store = MaskStore(path)
        try:
            ids = store.frame_ids
            store_bad = store.bad_frames
            source = store.source
            if ref is None:
                ref = (path.name, store)
            else:
                diff = check_same_producer(ref[0], ref[1], path.name, store)
                if diff:
                    shard_problem(path.name, diff)
        except StoreError as exc:
            shard_problem(path.name, f"shard {path.name}: cannot open ({as_corrupt(path, exc)})")
            store.close()
            continue
        stale = provenance_difference(path.name, source, manifest_sha=want_sha, root=manifest.root)
        if stale:
            shard_problem(path.name, stale)
        for fid, reason in store_bad.items():
            seen.setdefault(fid, []).append(path.name)
            bad[fid] = reason
        for fid in ids:
            seen.setdefault(fid, []).append(path.name)
        scan = read_frames(store, bar)
        for line in scan.problems:
            shard_problem(path.name, line)
        mtimes[path.name] = path.stat().st_mtime_ns
        rows.update(scan.sha)
        shapes.update(scan.shapes)
        located.update({fid: (path.name, row) for fid, row in scan.rows.items()})
        counts["frames"] += len(scan.sha)
        counts["masks"] += scan.masks
        if ref is None or ref[1] is not store:
            store.close()
    bar.close()
    if ref is not None:
        ref[1].close()
    counts["bad"] = len(bad)
    bad_pairs = find_bad_pairs(manifest.pairs, shapes, bad)
    problems.extend(index_problems(store_dir, located, bad, sidecars, set(bad_shards), bad_pairs))
    from unsamflow.pipeline.track import track_problems  # track ids, where stores have them

    problems.extend(track_problems([p for p in files if p.name not in bad_shards], manifest))

    wanted = set(manifest.frame_ids)
    for fid in manifest.frame_ids:
        holders = seen.get(fid, [])
        if not holders:
            problems.append(f"missing frame {fid!r}: in the manifest, in no store")
        elif len(holders) > 1:
            problems.append(f"frame {fid!r} is stored {len(holders)} times: {', '.join(holders)}")
    for fid in sorted(set(seen) - wanted):
        problems.append(f"extra frame {fid!r} in {', '.join(seen[fid])}: not in the manifest")

    # A frame whose source changed has stale masks: its shard is bad, so --repair makes it again.
    written = None if check_hashes else {fid: mtimes[name] for fid, (name, _) in located.items()}
    unreadable, changed = source_changes(manifest, {f: s for f, s in rows.items() if f in wanted}, progress,
                                         written)
    problems.extend(unreadable)
    for fid, line in changed.items():
        shard_problem(located[fid][0], f"shard {located[fid][0]}, {line}")

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
        bad_shards=bad_shards,
    )


def index_problems(store_dir: Path, located: dict[str, tuple[str, int]], bad: dict[str, str],
                   sidecars: dict[str, str], unread: set[str],
                   bad_pairs: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Where `index.json` (if there is one) disagrees with the stores as read: a frame mapped to another
    store or row, a frame missing from it, a shard's hash, a bad pair that the stores and the manifest
    do not make bad (`bad_pairs`: the ones they do; training leaves the index's out). Shards in
    `unread` are not judged."""
    if not (store_dir / INDEX_NAME).exists():
        return []
    try:
        index = Index.load(store_dir)
    except StoreError as exc:
        return [str(exc)]
    where = f"{store_dir / INDEX_NAME}"
    out = []
    files = [sh["file"] for sh in index.shards]
    for name, sha in sidecars.items():
        entry = next((sh for sh in index.shards if sh["file"] == name), None)
        if entry is None:
            out.append(f"{where} does not list shard {name}")
        elif entry.get("sha256") not in (None, sha):
            out.append(f"{where}: shard {name} has sha256 {sha[:12]}..., the index recorded "
                       f"{entry['sha256'][:12]}...")
    wrong = []
    for fid, (shard, row) in index.frames.items():
        name = files[shard]
        if name in unread:
            continue
        actual = located.get(fid)
        if actual != (name, row):
            now = f"it is at row {actual[1]} of {actual[0]}" if actual else "no store holds it as a frame"
            wrong.append(f"{where} maps frame {fid!r} to row {row} of {name}, but {now}")
    wrong += [f"{where} lacks frame {fid!r} ({name} row {row})" for fid, (name, row) in located.items()
              if fid not in index.frames]
    if index.bad_frames != bad and not unread:
        wrong.append(f"{where}: its bad frames differ from the stores' "
                     f"({len(index.bad_frames)} vs {len(bad)})")
    for (a, b), reason in index.bad_pairs.items() if bad_pairs is not None else ():
        judged = all(f in located or f in bad for f in (a, b))  # frames of unread shards are not
        if judged and (a, b) not in bad_pairs:
            wrong.append(f"{where} lists pair {a!r} -> {b!r} as bad ({reason}), but the stores and the "
                         "manifest do not: training would leave it out")
    out += wrong[:MAX_INDEX_LINES]
    if len(wrong) > MAX_INDEX_LINES:
        out.append(f"{where}: {len(wrong) - MAX_INDEX_LINES} more rows disagree with the stores")
    if out:
        out.append(f"{where} does not match the stores: run `pipeline index --stores {store_dir}`")
    return out


def source_changes(frames: Manifest, stored: dict[str, str], progress: bool = False,
                   written_ns: dict[str, int] | None = None) -> tuple[list[str], dict[str, str]]:
    """(lines for sources that cannot be read, frame id -> line for each source whose bytes differ from
    the sha256 stored with its masks). `frames`: the manifest or shard that locates the files.

    `written_ns` (frame id -> when its store was written, st_mtime_ns): hash only the sources modified
    since then (`--no-hash`: a stat per frame instead of reading every image; a source replaced in
    place is newer than its store). Sources that cannot be read are not reported in that mode."""
    unreadable: list[str] = []
    changed: dict[str, str] = {}
    for fid in tqdm(sorted(stored), desc="hash sources", unit="frame", disable=bar_disable(progress)):
        try:
            path = frames.path(fid)
            if written_ns is not None and path.stat().st_mtime_ns <= written_ns[fid]:
                continue
            now = file_sha256(path)
        except BadInputError as exc:
            if written_ns is None:
                unreadable.append(f"frame {fid!r}: {exc}")
            continue
        except OSError as exc:
            if written_ns is None:
                reason = exc.strerror or exc
                unreadable.append(f"frame {fid!r}: cannot read source image under {frames.root} ({reason})")
            continue
        if now != stored[fid]:
            changed[fid] = (f"frame {fid!r}: source image changed since it was segmented "
                            f"(stored sha256 {stored[fid][:12]}..., file now {now[:12]}...)")
    return unreadable, changed
