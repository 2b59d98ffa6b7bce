"""One index over every store of a directory: frame id -> (shard file, row).

Saved as `index.json` next to the stores. JSON is enough (measured: a 100k-frame index is 5.9 MB
and loads in 0.12 s), and people can read it. Each shard's size and mtime are recorded
so that a stale index (a store rewritten by `derive`, or replaced) is refused rather than trusted,
and its sha256 (from the store's checksum sidecar, see integrity) so that `verify` can compare.

An index is a claim about the stores, not trusted blindly: a malformed one is refused on load with
one message, and a row is used only after checking that it holds the frame asked for (two swapped
rows would otherwise hand out another frame's masks). `build_index` checks each store's bytes against
its sidecar before HDF5 parses it; a store without one is read in full (every frame decoded) and its
sidecar recorded then.

Built with the manifest (`pipeline index --manifest`), it also lists the manifest's bad pairs (a frame
recorded as bad, or two frames of different sizes), so that training can leave them out up front.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.manifest import Manifest, Pair
from unsamflow.pipeline.store.integrity import (
    StoreCorrupt,
    StoreUnverifiable,
    check_store_file,
    read_sidecar,
    write_sidecar,
)
from unsamflow.pipeline.store.reader import MaskStore
from unsamflow.pipeline.store.schema import FrameMasks

INDEX_NAME = "index.json"
INDEX_FORMAT = "unsamflow-index"
INDEX_VERSION = 1


def store_files(store_dir: str | Path) -> list[Path]:
    """Every complete store in `store_dir`: `*.h5`, not hidden (writers' temp files start with '.')."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise StoreError(f"store directory not found: {store_dir}")
    return sorted(p for p in store_dir.glob("*.h5") if not p.name.startswith(".") and p.is_file())


def first_difference(a: dict, b: dict) -> str | None:
    """Name of the first key whose values differ (sorted order), or None when equal."""
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            return key
    return None


def check_same_producer(ref_name: str, ref: MaskStore, name: str, other: MaskStore) -> str | None:
    """A message naming both files and the differing field when two stores were made differently."""
    for what, x, y in (("segmenter", ref.segmenter, other.segmenter),
                       ("derive config", ref.derive_config, other.derive_config)):
        key = first_difference(x, y)
        if key is not None:
            return (f"{ref_name} and {name} differ in {what} field {key!r}: "
                    f"{x.get(key)!r} vs {y.get(key)!r}")
    return None


def find_bad_pairs(pairs: list[Pair], shapes: dict[str, tuple[int, int]],
                   bad_frames: dict[str, str]) -> dict[tuple[str, str], str]:
    """(frame1, frame2) -> why the pair cannot be used: one of its frames is a recorded bad frame, or
    the two frames (as stored: `shapes` holds (H, W) per frame id) differ in size. Pairs with a frame
    in neither `shapes` nor `bad_frames` are not judged here (that is a missing frame, not a bad pair)."""
    out: dict[tuple[str, str], str] = {}
    for p in pairs:
        bad = [f for f in (p.frame1, p.frame2) if f in bad_frames]
        if bad:
            out[p.frame1, p.frame2] = f"frame {bad[0]!r} is bad: {bad_frames[bad[0]]}"
        elif p.frame1 in shapes and p.frame2 in shapes and shapes[p.frame1] != shapes[p.frame2]:
            (h1, w1), (h2, w2) = shapes[p.frame1], shapes[p.frame2]
            out[p.frame1, p.frame2] = f"frame sizes differ ({h1}x{w1} vs {h2}x{w2}, HxW)"
    return out


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Index:
    """Frame id -> (shard file, row) over one store directory; opens stores lazily and caches them."""

    store_dir: Path
    shards: list[dict]  # {"file", "size", "mtime_ns", "sha256", "frames", "bad"}
    frames: dict[str, tuple[int, int]]  # frame id -> (shard number, row)
    bad_frames: dict[str, str] = field(default_factory=dict)
    bad_pairs: dict[tuple[str, str], str] = field(default_factory=dict)  # only when built with a manifest
    segmenter: dict = field(default_factory=dict)
    derive_config: dict = field(default_factory=dict)
    _stores: dict[int, MaskStore] = field(default_factory=dict, repr=False)

    # -- lookup -------------------------------------------------------------------------------
    @property
    def frame_ids(self) -> list[str]:
        return list(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, frame_id: str) -> bool:
        return frame_id in self.frames

    def locate(self, frame_id: str) -> tuple[Path, int]:
        """(store file, row) of a frame."""
        shard, row = self._lookup(frame_id)
        return self.store_dir / self.shards[shard]["file"], row

    def _lookup(self, frame_id: str) -> tuple[int, int]:
        try:
            return self.frames[frame_id]
        except KeyError:
            hint = f" (recorded as bad: {self.bad_frames[frame_id]})" if frame_id in self.bad_frames else ""
            raise StoreError(f"{self.store_dir / INDEX_NAME}: no frame {frame_id!r}{hint}") from None

    def store_for(self, frame_id: str) -> tuple[MaskStore, int]:
        """The (cached) MaskStore holding a frame and its row there, after checking that the row holds
        that frame (StoreError naming both ids when the index is wrong)."""
        shard, row = self._lookup(frame_id)
        if shard not in self._stores:
            self._stores[shard] = MaskStore(self.store_dir / self.shards[shard]["file"])
        store = self._stores[shard]
        there = store.frame_id(row)
        if there != frame_id:
            raise StoreError(f"{self.store_dir / INDEX_NAME} is wrong: it maps frame {frame_id!r} to row "
                             f"{row} of {store.path.name}, which holds frame {there!r}; "
                             f"run `pipeline index --stores {self.store_dir}`")
        return store, row

    def open(self, frame_id: str) -> FrameMasks:
        """Everything stored about one frame."""
        store, row = self.store_for(frame_id)
        return store.read(row)

    def close(self) -> None:
        for s in self._stores.values():
            s.close()
        self._stores.clear()

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "segmenter": self.segmenter,
            "derive_config": self.derive_config,
            "shards": self.shards,
            "frames": {fid: list(loc) for fid, loc in self.frames.items()},
            "bad_frames": self.bad_frames,
            "bad_pairs": [{"frame1": a, "frame2": b, "reason": r} for (a, b), r in self.bad_pairs.items()],
        }

    def save(self) -> Path:
        """Write `index.json` atomically into the store directory."""
        return write_bytes_atomic(self.store_dir / INDEX_NAME, json.dumps(self.to_dict(), indent=0).encode())

    @classmethod
    def load(cls, store_dir: str | Path, check_stale: bool = True) -> Index:
        """Read `index.json`; refuses it when a store it lists has changed or gone since indexing."""
        store_dir = Path(store_dir)
        path = store_dir / INDEX_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"no index in {store_dir}: run `pipeline index --stores {store_dir}`") from None
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path}: not valid JSON ({exc})") from None
        got = data if isinstance(data, dict) else {}
        if got.get("format") != INDEX_FORMAT or got.get("version") != INDEX_VERSION:
            raise StoreError(f"{path}: not an unsamflow index version {INDEX_VERSION} "
                             f"(format={got.get('format')!r}, version={got.get('version')!r})")
        problem = malformed(data)
        if problem:
            raise StoreError(f"{path} is malformed: {problem}; run `pipeline index --stores {store_dir}`")
        if check_stale:
            rerun = f"run `pipeline index --stores {store_dir}`"
            for shard in data["shards"]:
                store = store_dir / shard["file"]
                if not store.is_file():
                    raise StoreError(f"{path} is stale: {store} is gone; {rerun}")
                if _stamp(store) != {"size": shard["size"], "mtime_ns": shard["mtime_ns"]}:
                    raise StoreError(f"{path} is stale: {store} changed since indexing; {rerun}")
        return cls(
            store_dir=store_dir,
            shards=data["shards"],
            frames={fid: (int(s), int(r)) for fid, (s, r) in data["frames"].items()},
            bad_frames=data.get("bad_frames", {}),
            bad_pairs={(p["frame1"], p["frame2"]): p["reason"] for p in data.get("bad_pairs", [])},
            segmenter=data.get("segmenter", {}),
            derive_config=data.get("derive_config", {}),
        )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def malformed(data: dict) -> str | None:
    """What is wrong with a loaded index.json's contents (None when well-formed): every shard entry a
    plain file name with integer counts, every frame an existing (shard, row) pair, no negative one."""
    shards = data.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    for i, sh in enumerate(shards):
        if not isinstance(sh, dict):
            return f"shard entry {i} is not an object"
        name = sh.get("file")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            return f"shard entry {i} has no plain file name (file={name!r})"
        for key in ("size", "mtime_ns", "frames", "bad"):
            if not _is_int(sh.get(key)) or sh[key] < 0:
                return f"shard entry {i} ({name}): {key}={sh.get(key)!r} is not a count"
    frames = data.get("frames")
    if not isinstance(frames, dict):
        return "'frames' is not an object"
    for fid, loc in frames.items():
        if not (isinstance(loc, list) and len(loc) == 2 and all(_is_int(v) for v in loc)):
            return f"frame {fid!r}: location {loc!r} is not [shard, row]"
        shard, row = loc
        if not 0 <= shard < len(shards):
            return f"frame {fid!r}: shard {shard} out of range 0..{len(shards) - 1}"
        if not 0 <= row < shards[shard]["frames"]:
            return f"frame {fid!r}: row {row} out of range for {shards[shard]['file']} " \
                   f"({shards[shard]['frames']} frames)"
    bad = data.get("bad_frames", {})
    if not isinstance(bad, dict) or not all(isinstance(v, str) for v in bad.values()):
        return "'bad_frames' is not an object of reasons"
    pairs = data.get("bad_pairs", [])
    if not isinstance(pairs, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("frame1", "frame2", "reason"))
            for p in pairs):
        return "'bad_pairs' is not a list of {frame1, frame2, reason}"
    for key in ("segmenter", "derive_config"):
        if not isinstance(data.get(key, {}), dict):
            return f"{key!r} is not an object"
    return None


def as_corrupt(path: Path, exc: StoreError) -> str:
    """One line for a store that cannot be used: "shard X is corrupt: ..." for HDF5 failures."""
    text = str(exc)
    if isinstance(exc, StoreCorrupt) and not text.startswith(f"shard {path.name} "):
        return f"shard {path.name} is corrupt: {text}"
    return text


REPAIR_HINT = "`pipeline segment --repair` (or `pipeline run --repair`) makes it again"


def structural_problems(path: Path) -> list[str]:
    """What a full read of a store finds (empty when it reads clean): every HDF5 attribute and every
    chunk of every dataset read, then every frame decoded and checked as `verify` checks it (areas,
    boxes, points and crop boxes inside the image, finite scores, labels and key-object indices)."""
    import h5py
    from unsamflow.pipeline.verify import read_frames

    def visit(_name: str, obj) -> None:
        dict(obj.attrs)
        if isinstance(obj, h5py.Dataset):
            if obj.chunks is None or not obj.shape:
                obj[()]
            else:  # a chunk's rows at a time: every chunk decompressed (gzip checks its own bytes)
                for start in range(0, obj.shape[0], obj.chunks[0]):
                    obj[start : start + obj.chunks[0]]

    try:
        with h5py.File(path, "r") as f:
            dict(f.attrs)
            f.visititems(visit)
        with MaskStore(path) as store:
            store.segmenter, store.derive_config, store.source, store.bad_frames  # noqa: B018
            return read_frames(store).problems
    except Exception as exc:  # a damaged file fails in many ways; each is "cannot read"
        return [f"shard {path.name}: cannot read ({type(exc).__name__}: {exc})"]


# A damaged HDF5 file can make the library loop for ever (test_integrity's bit flips: 1 in 64 here), so
# the full read of a store without a checksum runs in a child process with a time limit.
FULL_READ_BASE_S = 60.0
FULL_READ_BYTES_PER_S = 20e6


def full_read_problems(path: Path) -> list[str]:
    """`structural_problems` in a child process, stopped (and reported) when it does not finish within
    FULL_READ_BASE_S plus the file's size at FULL_READ_BYTES_PER_S."""
    import multiprocessing as mp

    limit = FULL_READ_BASE_S + path.stat().st_size / FULL_READ_BYTES_PER_S
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_full_read_child, args=(path, send), daemon=True)
    child.start()
    send.close()
    try:
        if receive.poll(limit):
            return receive.recv()
        return [f"shard {path.name}: a full read did not finish within {limit:.0f} s (HDF5 can loop on a "
                "damaged file)"]
    except EOFError:
        return [f"shard {path.name}: the full read crashed (exit status {child.exitcode})"]
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receive.close()


def _full_read_child(path: Path, send) -> None:
    send.send(structural_problems(path))
    send.close()


def check_and_open(path: Path) -> MaskStore:
    """A MaskStore for `path` once its bytes match its sidecar (StoreCorrupt before HDF5 sees them).

    A store without a sidecar is read in full first (`structural_problems`) and its sidecar recorded
    only when that read is clean: the one time HDF5 parses bytes that no checksum vouches for. One that
    fails is StoreCorrupt, naming what the read found and --repair; no sidecar is written for it.
    """
    try:
        check_store_file(path)
    except StoreUnverifiable:
        problems = full_read_problems(path)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreCorrupt(f"shard {path.name} has no checksum file and a full read finds it damaged: "
                               f"{problems[0]}{more}; {REPAIR_HINT}") from None
        write_sidecar(path)
    return MaskStore(path)


def build_index(store_dir: str | Path, save: bool = True, manifest: Manifest | None = None) -> Index:
    """Index every store in `store_dir` (and write `index.json` unless save=False).

    Refuses stores made by different segmenters / segmenter configs or derive configs, and frame ids
    present in two stores, naming both files, and corrupt stores ("shard X is corrupt", checked
    against their sidecars before they are opened; see `check_and_open`). With the `manifest`, the
    index also lists its bad pairs (see `find_bad_pairs`).
    """
    store_dir = Path(store_dir)
    files = store_files(store_dir)
    if not files:
        raise StoreError(f"no mask stores (*.h5) in {store_dir}")
    shards: list[dict] = []
    frames: dict[str, tuple[int, int]] = {}
    bad: dict[str, str] = {}
    where: dict[str, str] = {}  # frame id -> store name, for duplicate messages
    shapes: dict[str, tuple[int, int]] = {}
    ref: MaskStore | None = None
    for i, path in enumerate(files):
        try:
            store = check_and_open(path)
        except StoreError as exc:
            raise StoreError(f"cannot index {store_dir}: {as_corrupt(path, exc)}") from None
        with store:
            if ref is None:
                ref = MaskStore(path)
            else:
                problem = check_same_producer(files[0].name, ref, path.name, store)
                if problem:
                    raise StoreError(f"cannot index {store_dir}: {problem}")
            ids = store.frame_ids
            store_bad = store.bad_frames
            for fid in [*ids, *store_bad]:
                if fid in where:
                    raise StoreError(f"frame {fid!r} is in two stores: {where[fid]} and {path.name}")
                where[fid] = path.name
            frames.update({fid: (i, row) for row, fid in enumerate(ids)})
            if manifest is not None:
                shapes.update({fid: store.image_shape(row) for row, fid in enumerate(ids)})
            bad.update(store_bad)
            sha = read_sidecar(path)["sha256"]
            shards.append({"file": path.name, **_stamp(path), "sha256": sha, "frames": len(ids),
                           "bad": len(store_bad)})
    assert ref is not None
    bad_pairs = find_bad_pairs(manifest.pairs, shapes, bad) if manifest is not None else {}
    index = Index(store_dir, shards, frames, bad, bad_pairs, ref.segmenter, ref.derive_config)
    ref.close()
    if save:
        index.save()
    return index
