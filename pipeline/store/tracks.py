"""Track ids in a mask store (format version 2): the optional `tracks/` group.

    tracks/mask_track (m,) int64    track id of each mask, row for row with masks/*
    tracks/key_track  (k,) int64    track id of each key object, row for row with derived/key_objects
                                    (= the track of the key object's mask)
    tracks attribute `config`       JSON: linker, flow, gap, min_iou, options, manifest_sha256,
                                    sequences (how many the manifest has)

A track id is unique over the whole manifest: sequence number (position of the frame's sequence in the
manifest) * 2**32 + the track's number within its sequence, so ids never collide between sequences or
stores and say which sequence they belong to. Stores of version 1, and version-2 stores whose masks were
re-derived since (`derive` rewrites a store without this group), have no tracks: `read_mask_tracks`
returns None. A store with tracks is rewritten whole and atomically, as every store change is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
from unsamflow.pipeline.atomic import temp_path
from unsamflow.pipeline.canonical import canonical_json
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.store.integrity import commit_store
from unsamflow.pipeline.store.reader import MaskStore
from unsamflow.pipeline.store.schema import _GZIP, DESCRIPTIONS, ROWS_CHUNK

GROUP = "tracks"
TRACKS_VERSION = 2  # the store format version that introduced tracks
SEQUENCE_SHIFT = 32  # track id = sequence number << 32 | number within the sequence


def track_id(sequence: int, number: np.ndarray | int) -> np.ndarray:
    return (np.int64(sequence) << SEQUENCE_SHIFT) + np.asarray(number, np.int64)


def sequence_of(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ids, np.int64) >> SEQUENCE_SHIFT


def track_config(store: MaskStore) -> dict | None:
    """The `config` of a store's tracks, or None when it has none."""
    h5 = store._file()
    if GROUP not in h5:
        return None
    return json.loads(h5[GROUP].attrs["config"])


def read_mask_tracks(store: MaskStore, key: str | int) -> np.ndarray | None:
    """Track id of each of one frame's masks (N,), or None when the store has no tracks."""
    r = store._row_of(key)
    if GROUP not in store._file():
        return None
    return store._slice(f"{GROUP}/mask_track", int(store._mstart[r]), int(store._mcount[r]))


def read_key_tracks(store: MaskStore, key: str | int) -> np.ndarray | None:
    """Track id of each of one frame's key objects (K,), or None when the store has no tracks."""
    r = store._row_of(key)
    if GROUP not in store._file():
        return None
    return store._slice(f"{GROUP}/key_track", int(store._kstart[r]), int(store._kcount[r]))


def all_tracks(store: MaskStore) -> tuple[np.ndarray, np.ndarray] | None:
    """(mask_track, key_track) of the whole store, flat as stored, or None without tracks."""
    h5 = store._file()
    if GROUP not in h5:
        return None
    try:
        return h5[f"{GROUP}/mask_track"][()], h5[f"{GROUP}/key_track"][()]
    except Exception as exc:
        raise StoreError(f"{store.path}: cannot read its tracks ({type(exc).__name__}: {exc})") from None


def write_tracks(path: str | Path, mask_tracks: dict[str, np.ndarray], config: dict) -> Path:
    """Rewrite the store at `path` with `mask_tracks` (frame id -> track id of each mask) for every good
    frame, and the key objects' tracks taken from them; everything else is copied as it is. Atomic: a
    temporary file, then a rename with a new checksum sidecar (a kill leaves the old store whole)."""
    path = Path(path)
    src = MaskStore(path)
    tmp = temp_path(path)
    try:
        n_frames = len(src)
        mask_rows, key_rows = [], []
        for r in range(n_frames):
            fid = src.frame_id(r)
            n = int(src._mcount[r])
            tr = np.asarray(mask_tracks.get(fid, ()), np.int64).reshape(-1)
            if fid not in mask_tracks or tr.size != n:
                raise StoreError(f"{path}: frame {fid!r} has {n} masks, tracks were given for "
                                 f"{tr.size if fid in mask_tracks else 'none'} of them")
            if np.unique(tr).size != tr.size:
                raise StoreError(f"{path}: frame {fid!r}: a track id given to two of its masks")
            mask_rows.append(tr)
            key_rows.append(tr[src.read_key_objects(r)])
        with h5py.File(tmp, "w") as out:
            fin = src._file()
            for k, v in fin.attrs.items():
                out.attrs[k] = v
            for group in fin:
                if group != GROUP:
                    fin.copy(fin[group], out, name=group)
            out.attrs["format_version"] = max(TRACKS_VERSION, int(fin.attrs["format_version"]))
            g = out.create_group(GROUP)
            g.attrs["config"] = canonical_json(config)
            g.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for name, rows in (("mask_track", mask_rows), ("key_track", key_rows)):
                data = np.concatenate(rows) if rows else np.zeros(0, np.int64)
                ds = g.create_dataset(name, data=data, dtype=np.int64, maxshape=(None,),
                                      chunks=(ROWS_CHUNK,), **_GZIP)
                ds.attrs["description"] = DESCRIPTIONS[f"{GROUP}/{name}"]
        src.close()
        commit_store(tmp, path)
    except BaseException:
        src.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
