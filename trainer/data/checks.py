"""Is each store row made from the file on disk? Checked once, before training, for every frame used.

Modes (CHECKS):
  hash  the file's sha256 equals the one recorded when it was segmented (default; exact: any change to
        the file or a store made from another manifest is caught). Files are hashed on a few threads
        (hashlib releases the GIL); measured in benchmarks/bench_loader.py.
  size  the image size read from the file header (PNG / JPEG; other formats are decoded) equals the
        stored one: catches stores of another resolution or set, not a re-encoded or edited frame.
  none  no file is opened (the store's own sizes are still checked pair by pair).
`sample=N` checks N frames drawn at random (fixed seed) instead of all: a cheap spot check on big sets.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.images import file_sha256, read_rgb

CHECKS = ("hash", "size", "none")
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class StoredFrame:
    """A frame as its store recorded it, and where its file is now."""

    frame_id: str
    path: Path
    shape: tuple[int, int] | None  # (H, W); None when the frame has no store
    sha256: str | None


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while True:
        head = f.read(2)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            f.seek(-1, os.SEEK_CUR)
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        if marker in _JPEG_SOF:
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return h, w
        f.seek(length - 2, os.SEEK_CUR)


def image_size(path: Path, frame_id: str = "") -> tuple[int, int]:
    """(H, W) of an image from its header (PNG, JPEG), or by decoding it (anything else)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head[:8] == _PNG and head[12:16] == b"IHDR":
                w, h = struct.unpack(">II", head[16:24])
                return h, w
            if head[:2] == b"\xff\xd8":
                size = _jpeg_size(f)
                if size is not None:
                    return size
    except FileNotFoundError:
        raise BadFrameError(frame_id or str(path), f"file not found: {path}") from None
    except OSError as exc:
        raise BadFrameError(frame_id or str(path), f"cannot read {path}: {exc.strerror or exc}") from None
    rgb, _ = read_rgb(path, frame_id or None)
    return rgb.shape[0], rgb.shape[1]


def _problem(frame: StoredFrame, mode: str) -> str | None:
    try:
        if mode == "hash":
            try:
                now = file_sha256(frame.path)
            except FileNotFoundError:
                return f"frame {frame.frame_id!r}: file not found: {frame.path}"
            except OSError as exc:
                return f"frame {frame.frame_id!r}: cannot read {frame.path}: {exc.strerror or exc}"
            if frame.sha256 is not None and now != frame.sha256:
                return (f"frame {frame.frame_id!r}: the file differs from the one its mask store was made "
                        f"from (stored sha256 {frame.sha256[:12]}..., file {now[:12]}...); re-run the "
                        f"pipeline for this data set or point `masks` at its stores")
            if frame.sha256 is not None:
                return None
        h, w = image_size(frame.path, frame.frame_id)
    except BadFrameError as exc:
        return str(exc)
    if frame.shape is not None and (h, w) != frame.shape:
        sh, sw = frame.shape
        return (f"frame {frame.frame_id!r}: the file is {w}x{h} but its mask store has {sw}x{sh} "
                f"(stores made from another image size or data set)")
    return None


def check_files(frames: Iterable[StoredFrame], mode: str = "hash", sample: int | None = None,
                seed: int = 0, threads: int | None = None) -> list[str]:
    """One line per frame whose file does not match its store (empty when all agree); see the module doc."""
    if mode not in CHECKS:
        raise BadInputError(f"check must be one of {', '.join(CHECKS)}, got {mode!r}")
    frames = list(frames)
    if mode == "none" or not frames:
        return []
    if sample is not None and sample < len(frames):
        if sample < 1:
            raise BadInputError(f"check sample must be >= 1 frames, got {sample}")
        pick = np.random.default_rng(seed).choice(len(frames), size=sample, replace=False)
        frames = [frames[i] for i in sorted(pick)]
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda f: _problem(f, mode), frames, chunksize=64))
    return [p for p in found if p is not None]
