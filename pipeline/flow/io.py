"""Flow files on disk: Middlebury/Sintel `.flo`, KITTI 16-bit PNG, Sintel-style 0/255 mask PNGs, label PNGs.

Every reader returns `(flow, valid)`: flow is H x W x 2 float32 (u, v) with unknown pixels set to 0
(so arithmetic on it is always finite), valid is H x W bool. Every format error raises
`BadInputError` naming the file and what is wrong with it.

Round trips: `.flo` is exact (float32 in, float32 out; invalid pixels come back invalid).
KITTI PNG stores u, v as round(64 * u) + 2^15 in uint16, so it is exact to 1/64 px and clipped to
[-512, 511.984375] px (KITTI_MIN, KITTI_MAX); write_kitti_flow refuses nothing but clips, as the
format cannot hold more.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import write_png

FLO_MAGIC = 202021.25
FLO_UNKNOWN = 1e10  # what we write for unknown flow (Middlebury's flowIO writes the same)
FLO_UNKNOWN_THRESH = 1e9  # |value| above this means unknown (Middlebury files hold ~1.67e9)
MAX_DIM = 1 << 16  # larger than any real flow field; a bigger header is corruption, not data

KITTI_SCALE = 64.0
KITTI_OFFSET = 2**15
KITTI_MIN = (0 - KITTI_OFFSET) / KITTI_SCALE  # -512.0
KITTI_MAX = (65535 - KITTI_OFFSET) / KITTI_SCALE  # 511.984375


# -- .flo ------------------------------------------------------------------------------------
def read_flo(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a .flo file: (flow H x W x 2 float32, valid H x W bool).

    Unknown pixels (|u| or |v| > 1e9, or not finite) are invalid and their flow is set to 0.
    """
    data = _read_bytes(path)
    if len(data) < 12:
        raise BadInputError(f"{path}: .flo file truncated ({len(data)} bytes, header needs 12)")
    magic = np.frombuffer(data, "<f4", 1, 0)[0]
    if magic != np.float32(FLO_MAGIC):
        raise BadInputError(f"{path}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", 2, 4))
    if not (0 < w <= MAX_DIM and 0 < h <= MAX_DIM):
        raise BadInputError(f"{path}: .flo header has nonsense dimensions {h}x{w} (HxW)")
    need = 12 + 8 * w * h
    if len(data) < need:
        raise BadInputError(f"{path}: .flo file truncated ({len(data)} bytes, {h}x{w} (HxW) needs {need})")
    if len(data) > need:
        raise BadInputError(f"{path}: .flo file has {len(data) - need} trailing bytes after {h}x{w} (HxW) "
                            "flow")
    flow = np.frombuffer(data, "<f4", 2 * w * h, 12).reshape(h, w, 2).astype(np.float32)
    return _split_unknown(flow)


def write_flo(path: str | Path, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write H x W x 2 flow as .flo (atomically); pixels with valid == False are written as unknown."""
    flow = _check_flow(flow, path)
    out = flow.astype("<f4", copy=True)
    if valid is not None:
        out[~_check_mask(valid, flow.shape[:2], path)] = FLO_UNKNOWN
    h, w = flow.shape[:2]
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
    return write_bytes_atomic(path, header + out.tobytes())


# -- KITTI 16-bit PNG ------------------------------------------------------------------------------
def read_kitti_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a KITTI flow PNG (16-bit, 3 channels): (flow H x W x 2 float32, valid H x W bool)."""
    img = _read_png(path, "KITTI flow PNG", np.uint16)
    if img.ndim != 3 or img.shape[2] != 3:
        chans = 1 if img.ndim == 2 else img.shape[2]
        raise BadInputError(f"{path}: KITTI flow PNG must have 3 channels, this one has {chans}")
    b, g, r = img[..., 0], img[..., 1], img[..., 2]  # OpenCV gives BGR
    flow = np.empty(img.shape[:2] + (2,), np.float32)
    flow[..., 0] = (r.astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    flow[..., 1] = (g.astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    valid = b > 0
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: str | Path, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write flow as a KITTI 16-bit PNG, rounded to 1/64 px and clipped to [KITTI_MIN, KITTI_MAX]."""
    flow = _check_flow(flow, path)
    h, w = flow.shape[:2]
    ok = np.isfinite(flow).all(axis=2)
    if valid is not None:
        ok &= _check_mask(valid, (h, w), path)
    q = np.clip(np.rint(np.nan_to_num(flow) * KITTI_SCALE) + KITTI_OFFSET, 0, 65535).astype(np.uint16)
    img = np.zeros((h, w, 3), np.uint16)
    img[..., 0], img[..., 1], img[..., 2] = q[..., 0], q[..., 1], ok.astype(np.uint16)  # R=u, G=v, B=valid
    img[~ok, :2] = KITTI_OFFSET  # invalid pixels hold zero flow, as KITTI's own files do
    return write_png(path, img)


# -- masks ---------------------------------------------------------------------------------------
def read_mask_png(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a Sintel-style 8-bit mask PNG (occlusions/, invalid/): True where the pixel is > 127."""
    img = _read_png(path, "mask PNG", np.uint8)
    if img.ndim == 3:
        img = img[..., 0]
    if shape is not None and img.shape != tuple(shape):
        raise BadInputError(f"{path}: mask is {img.shape[0]}x{img.shape[1]} (HxW), "
                            f"expected {shape[0]}x{shape[1]}")
    return img > 127


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a bool mask as an 8-bit 0/255 PNG (the Sintel convention: 255 = occluded / invalid)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise BadInputError(f"{path}: mask must be H x W, got shape {mask.shape}")
    return write_png(path, mask.astype(np.uint8) * 255)


def read_label_png(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A label map (instance ids, a full segmentation) as a single-channel 8/16-bit PNG: H x W uint16."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInputError(f"{path}: cannot read as an image")
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise BadInputError(
            f"{path}: a label map must be a single-channel 8/16-bit PNG, got shape {img.shape} {img.dtype}"
        )
    if shape is not None and img.shape != tuple(shape):
        want = f"{shape[0]}x{shape[1]}"
        raise BadInputError(f"{path}: labels are {img.shape[0]}x{img.shape[1]} (HxW), expected {want}")
    return img.astype(np.uint16)


# -- dispatch by extension -------------------------------------------------------------------------
def read_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read .flo, KITTI .png or .pfm flow by extension: (flow H x W x 2 float32, valid H x W bool)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        return read_kitti_flow(path)
    if suffix == ".pfm":
        return read_pfm_flow(path)
    raise BadInputError(f"{path}: unknown flow file type {suffix!r} (expected .flo, KITTI .png or .pfm)")


# -- .pfm (FlyingThings3D) -------------------------------------------------------------------
def read_pfm_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Flow from a PFM file as FlyingThings3D stores it: 3 float channels (u, v, 0), rows stored bottom
    first, the sign of the scale line giving the byte order (negative = little-endian)."""
    data = _read_bytes(path)
    parts = data.split(b"\n", 3)
    if len(parts) < 4 or parts[0].strip() not in (b"PF", b"Pf"):
        raise BadInputError(f"{path}: not a PFM file (header {data[:8]!r})")
    channels = 3 if parts[0].strip() == b"PF" else 1
    try:
        w, h = (int(v) for v in parts[1].split())
        scale = float(parts[2])
    except ValueError:
        raise BadInputError(f"{path}: malformed PFM header {b' '.join(parts[:3])!r}") from None
    if channels < 2:
        raise BadInputError(f"{path}: a one-channel PFM (disparity?) holds no flow")
    if not (0 < w <= MAX_DIM and 0 < h <= MAX_DIM):
        raise BadInputError(f"{path}: PFM header has nonsense dimensions {h}x{w} (HxW)")
    need = 4 * channels * w * h
    if len(parts[3]) != need:
        raise BadInputError(f"{path}: PFM data is {len(parts[3])} bytes, {h}x{w}x{channels} needs {need}")
    values = np.frombuffer(parts[3], "<f4" if scale < 0 else ">f4").reshape(h, w, channels)
    return _split_unknown(np.ascontiguousarray(values[::-1, :, :2]).astype(np.float32))


def write_flow(path: str | Path, flow: np.ndarray, valid: np.ndarray | None = None) -> Path:
    """Write .flo or KITTI .png flow by extension."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return write_flo(path, flow, valid)
    if suffix == ".png":
        return write_kitti_flow(path, flow, valid)
    raise BadInputError(f"{path}: unknown flow file type {suffix!r} (expected .flo or .png)")


# -- helpers ---------------------------------------------------------------------------------------
def _read_png(path: str | Path, kind: str, dtype: type) -> np.ndarray:
    """A PNG decoded as stored (OpenCV's BGR order), refused unless it holds `dtype` values."""
    data = _read_bytes(path)
    # IMREAD_UNCHANGED keeps 16 bits (Pillow silently reduces KITTI's files to 8 bits).
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        raise BadInputError(f"{path}: cannot decode {kind} (empty, corrupt or truncated)")
    if img.dtype != dtype:
        bits = 8 * np.dtype(dtype).itemsize
        raise BadInputError(f"{path}: {kind} must be {bits}-bit, this one is {img.dtype}")
    return img


def _split_unknown(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore"):
        valid = (np.abs(flow) <= FLO_UNKNOWN_THRESH).all(axis=2)  # NaN compares False -> invalid
    flow[~valid] = 0.0
    return flow, valid


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"flow file not found: {path}") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _check_flow(flow: np.ndarray, path: str | Path) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or min(flow.shape[:2]) == 0:
        raise BadInputError(f"{path}: flow to write must be H x W x 2, got shape {flow.shape}")
    return flow.astype(np.float32, copy=False)


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], path: str | Path) -> np.ndarray:
    mask = np.asarray(mask, bool)
    if mask.shape != tuple(shape):
        raise BadInputError(f"{path}: valid mask shape {mask.shape} does not match flow {tuple(shape)}")
    return mask

