"""Flow pictures: the Middlebury colour wheel (Baker et al., ICCV 2007) and side-by-side panels.

The wheel and the colour formula are those of torchvision.utils.flow_to_image (the tests check that
the pictures agree, up to float rounding on a few pixels, when the scale is automatic). We add what
torchvision lacks: a fixed `max_flow`, so that pictures of different flows are comparable (vectors
longer than max_flow are drawn at full saturation), and black for unknown pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from unsamflow.pipeline.errors import BadInputError


def _make_colorwheel() -> np.ndarray:
    """55 x 3 RGB wheel: red-yellow-green-cyan-blue-magenta with Middlebury's segment lengths."""
    # (length, channel held at 255, channel that ramps, ramps up?)
    segments = [(15, 0, 1, True), (6, 1, 0, False), (4, 1, 2, True),
                (11, 2, 1, False), (13, 2, 0, True), (6, 0, 2, False)]  # fmt: skip
    blocks = []
    for n, full, ramp, up in segments:
        block = np.zeros((n, 3))
        step = np.floor(255 * np.arange(n) / n)
        block[:, full] = 255
        block[:, ramp] = step if up else 255 - step
        blocks.append(block)
    return np.concatenate(blocks)


COLORWHEEL = _make_colorwheel().astype(np.float32)


def flow_to_color(
    flow: np.ndarray, valid: np.ndarray | None = None, max_flow: float | None = None
) -> np.ndarray:
    """H x W x 2 flow -> H x W x 3 uint8 RGB picture.

    max_flow: the magnitude drawn at full saturation; None scales by the largest valid vector
    (as torchvision does). valid: pixels outside it are drawn black and ignored for scaling.
    """
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise BadInputError(f"flow must be H x W x 2, got shape {flow.shape}")
    if max_flow is not None and not max_flow > 0:
        raise BadInputError(f"max_flow must be positive, got {max_flow}")
    ok = np.isfinite(flow).all(axis=2)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    u = np.where(ok, flow[..., 0], 0.0).astype(np.float32)
    v = np.where(ok, flow[..., 1], 0.0).astype(np.float32)
    rad = np.sqrt(u * u + v * v)
    # torchvision adds float32 eps to the automatic scale; keep it so the pictures are identical.
    scale = float(max_flow) if max_flow is not None else float(rad.max()) + float(np.finfo(np.float32).eps)
    u, v = u / np.float32(scale), v / np.float32(scale)
    norm = np.minimum(np.sqrt(u * u + v * v), 1.0)

    ncols = len(COLORWHEEL)
    fk = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = np.where(k0 + 1 == ncols, 0, k0 + 1)
    f = (fk - np.floor(fk))[..., None]
    # float32 throughout, in torchvision's order of operations, so the pictures agree.
    col = (1 - f) * (COLORWHEEL[k0] / np.float32(255)) + f * (COLORWHEEL[k1] / np.float32(255))
    col = 1 - norm[..., None] * (1 - col)
    img = np.floor(255 * col).astype(np.uint8)
    img[~ok] = 0
    return img


def error_to_color(epe: np.ndarray, valid: np.ndarray | None = None, max_error: float = 5.0) -> np.ndarray:
    """End-point error map -> RGB (black 0 px, through red and yellow, to white at max_error)."""
    t = np.clip(np.asarray(epe, np.float32) / max_error, 0, 1)
    img = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    img = (255 * img).astype(np.uint8)
    if valid is not None:
        img[~np.asarray(valid, bool)] = (0, 0, 96)  # dark blue: no ground truth here
    return img


def flow_panel(
    img1: np.ndarray,
    img2: np.ndarray,
    flow: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    max_flow: float | None = None,
    max_error: float = 5.0,
) -> np.ndarray:
    """frame1 | frame2 | flow | GT flow | error, side by side (RGB uint8); missing parts are left out.

    flow is a prediction, gt the ground truth (valid marks where it is known). With only gt, the
    panel is frame1 | frame2 | GT. One max_flow (default: the largest valid GT or flow vector) is used
    for both flow pictures so their colours compare.
    """
    tiles: list[np.ndarray] = [img1, img2]
    if max_flow is None:
        ref = gt if gt is not None else flow
        if ref is not None:
            mag = np.linalg.norm(np.nan_to_num(ref), axis=2)
            if valid is not None and gt is not None:
                mag = mag[np.asarray(valid, bool)]
            max_flow = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    if flow is not None:
        tiles.append(flow_to_color(flow, max_flow=max_flow))
    if gt is not None:
        tiles.append(flow_to_color(gt, valid, max_flow=max_flow))
    if flow is not None and gt is not None:
        tiles.append(error_to_color(np.linalg.norm(flow - gt, axis=2), valid, max_error))
    return hstack(tiles)


def hstack(tiles: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Tiles of the same height (grey ones are made RGB) with white gaps between them."""
    h = tiles[0].shape[0]
    out = []
    for i, t in enumerate(tiles):
        if t.shape[0] != h:
            raise BadInputError(f"panel tile {i} is {t.shape[0]} px high, expected {h}")
        out.append(np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t)
        if i < len(tiles) - 1:
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)

