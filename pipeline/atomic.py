"""Atomic files: built under a temporary name in the same folder, then renamed into place.

A reader never sees a half-written file, and a crash leaves at most a hidden temporary
(`.<name>.tmp-<pid>`; store listings and build_index skip names starting with '.').
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


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` (creating folders) under a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
