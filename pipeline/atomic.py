"""Atomic files: built under a temporary name in the same folder, then renamed into place.

A reader never sees a half-written file, and a crash leaves at most a hidden temporary
(`.<name>.tmp-<pid>`; store listings and build_index skip names starting with '.'). Every writer
of the project goes through `replace_atomic`, so all of them have the same durability: the data
is fsynced before the rename and the folder after it, so a power loss cannot leave a renamed but
empty file.
"""

from __future__ import annotations

import os
from pathlib import Path


def temp_path(path: Path) -> Path:
    """Where a writer in this process builds `path` before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def stale_temps(path: Path) -> list[Path]:
    """Temporaries of `path` left by writers that died (any process id)."""
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def fsync_path(path: str | Path) -> None:
    """fsync a file or a folder by path (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomic(tmp: str | Path, path: str | Path) -> Path:
    """Make the finished temporary `tmp` appear as `path`: fsync it, rename, fsync the folder."""
    path = Path(path)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` (creating folders) under a temporary name, then rename durably."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        return replace_atomic(tmp, path)
    except OSError as exc:  # e.g. a full disk: name the file the user knows, not the hidden temporary
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc} (nothing written; the old file, if any, is "
                      "unchanged)", str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
