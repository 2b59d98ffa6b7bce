"""Checksums of committed stores: `<store>.h5.sha256.json` beside each store, checked before HDF5 parses it.

HDF5 trusts its own metadata: one flipped bit there can make the library loop for ever or fail with
an unrelated KeyError, and a damaged data chunk is only noticed when that frame is read. So every
store is hashed (sha256, streaming) when it is committed and the size and hash are written to a small
JSON sidecar, atomically, after the store's rename. `verify`, `index` and `segment`'s completeness
check compare the file against its sidecar first, so a corrupt file is never opened there.

The sidecar is written after the rename (the old one is removed before it): a writer that dies in
between leaves a complete store without a sidecar, never a sidecar that describes another file. A
store without a sidecar (made before sidecars existed, or by such a writer) is *unverifiable*:
`verify` and `segment` name it and do not open it; `pipeline index` checks it in full (every frame
read and decoded) and then records its sidecar; `segment --repair` makes it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from unsamflow.pipeline.atomic import replace_atomic, write_bytes_atomic
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.images import file_sha256

SIDECAR_SUFFIX = ".sha256.json"
SIDECAR_FORMAT = "unsamflow-store-checksum"


class StoreCorrupt(StoreError):
    """A store's bytes differ from those recorded when it was committed, or HDF5 cannot parse it."""


class StoreUnverifiable(StoreError):
    """A store has no sidecar, so its bytes cannot be checked without letting HDF5 parse them."""


def sidecar_path(store: str | Path) -> Path:
    store = Path(store)
    return store.with_name(store.name + SIDECAR_SUFFIX)


def write_sidecar(store: str | Path, sha256: str | None = None) -> dict:
    """Record `store`'s size and sha256 (hashing it unless given) in its sidecar, atomically."""
    store = Path(store)
    record = {"format": SIDECAR_FORMAT, "version": 1, "file": store.name, "size": store.stat().st_size,
              "sha256": sha256 or file_sha256(store),
              "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_bytes_atomic(sidecar_path(store), json.dumps(record, indent=1).encode())
    return record


def commit_store(tmp: str | Path, path: str | Path) -> dict:
    """Rename the finished temporary store `tmp` to `path` and record its sidecar; returns the sidecar.

    The hash is taken from `tmp` (just written, so read from the page cache), before the rename.
    """
    tmp, path = Path(tmp), Path(path)
    sha = file_sha256(tmp)
    sidecar_path(path).unlink(missing_ok=True)  # never a sidecar describing the file being replaced
    replace_atomic(tmp, path)
    return write_sidecar(path, sha)


def read_sidecar(store: str | Path) -> dict | None:
    """The sidecar of `store`, or None when it has none; StoreCorrupt when it is unreadable."""
    path = sidecar_path(store)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreCorrupt(f"shard {Path(store).name} is corrupt: its checksum file {path.name} is "
                           f"unreadable ({exc})") from None
    ok = (isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT
          and isinstance(data.get("size"), int) and isinstance(data.get("sha256"), str)
          and len(data["sha256"]) == 64)
    if not ok:
        raise StoreCorrupt(f"shard {Path(store).name} is corrupt: its checksum file {path.name} is malformed")
    return data


def check_store_file(store: str | Path, hash_bytes: bool = True) -> dict:
    """The sidecar of `store` after checking the file against it (size, then sha256 unless not
    `hash_bytes`). Raises StoreUnverifiable (no sidecar) or StoreCorrupt, naming the shard."""
    store = Path(store)
    record = read_sidecar(store)
    if record is None:
        raise StoreUnverifiable(
            f"shard {store.name} is unverifiable: it has no checksum file {sidecar_path(store).name} "
            f"(written before unsamflow recorded them, or its writer died right after the commit); "
            f"`pipeline index --stores {store.parent}` checks it in full and records one, "
            "`pipeline segment --repair` makes it again")
    try:
        size = store.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"mask store not found: {store}") from None
    if size != record["size"]:
        raise StoreCorrupt(f"shard {store.name} is corrupt: {size} bytes, {record['size']} when committed")
    if hash_bytes:
        now = file_sha256(store)
        if now != record["sha256"]:
            raise StoreCorrupt(f"shard {store.name} is corrupt: its sha256 {now[:12]}... differs from the "
                               f"one recorded when it was committed ({record['sha256'][:12]}...)")
    return record
