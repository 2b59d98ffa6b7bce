"""Images on disk: reading frames (RGB pixels and the content hash in one read) and the one PNG writer."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import cv2
import numpy as np
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadFrameError, BadInputError

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file read in blocks, so memory stays flat for frames and multi-GB checkpoints."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to H x W x 3 uint8 RGB.

    Grayscale is replicated to three channels, 16-bit is scaled to 8-bit, alpha is dropped.
    Zero-byte, undecodable and truncated files raise BadFrameError naming `name`.
    """
    if len(data) == 0:
        raise BadFrameError(name, "file is empty (0 bytes)")
    # libjpeg decodes a truncated JPEG silently (grey bottom rows), so check the end marker.
    if data[:2] == _JPEG_SOI and _JPEG_EOI not in data[-64:]:
        raise BadFrameError(name, "JPEG is truncated (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise BadFrameError(name, "cannot decode image (unknown format, corrupt or truncated)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadFrameError(name, f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise BadFrameError(name, f"unsupported image shape {img.shape}")
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1])


def read_rgb(path: str | Path, name: str | None = None, timings: dict[str, float] | None = None
             ) -> tuple[np.ndarray, str]:
    """Read a frame: (H x W x 3 uint8 RGB, sha256 of the file bytes).

    `timings`: seconds spent reading, hashing and decoding are added to its "read", "hash" and
    "decode" entries (the segment stage's per-phase profile).
    """
    path = Path(path)
    label = name or str(path)
    t0 = time.perf_counter()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadFrameError(label, f"file not found: {path}") from None
    except OSError as exc:
        raise BadFrameError(label, f"cannot read {path}: {exc.strerror or exc}") from None
    t1 = time.perf_counter()
    sha = sha256_bytes(data)
    t2 = time.perf_counter()
    rgb = decode_rgb(data, label)
    if timings is not None:
        t3 = time.perf_counter()
        for key, dt in (("read", t1 - t0), ("hash", t2 - t1), ("decode", t3 - t2)):
            timings[key] = timings.get(key, 0.0) + dt
    return rgb, sha


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write a picture as PNG, atomically (creating folders): RGB (H, W, 3) or single-channel (H, W),
    8- or 16-bit. Colour is given in RGB order everywhere in the project; only this function knows
    that OpenCV encodes BGR."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]
    elif img.ndim != 2:
        raise BadInputError(f"{path}: a PNG picture must be H x W or H x W x 3, got shape {img.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise BadInputError(f"{path}: PNG encoding failed")
    return write_bytes_atomic(path, buf.tobytes())
