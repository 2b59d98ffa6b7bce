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


# The KITTI flow devkit's error colours (its flow_error_image), on end-point error in px: bins doubling
# from 3/16 px, blue below 1.5 px, pale at 1.5-3, yellow to red from 3 px (KITTI's outlier threshold) up,
# dark red from 48 px. A model wrong everywhere is red everywhere, never blank.
ERROR_BINS = (0.0, 0.1875, 0.375, 0.75, 1.5, 3.0, 6.0, 12.0, 24.0, 48.0)
ERROR_COLORS = np.array([(49, 54, 149), (69, 117, 180), (116, 173, 209), (171, 217, 233), (224, 243, 248),
                         (254, 224, 144), (253, 174, 97), (244, 109, 67), (215, 48, 39), (165, 0, 38)],
                        np.uint8)  # fmt: skip


def error_to_color(epe: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """End-point error map (px) -> RGB in the KITTI devkit's colours (ERROR_BINS); black where there is no
    ground truth (`valid` False) or the error is not finite."""
    e = np.asarray(epe, np.float32)
    img = ERROR_COLORS[np.clip(np.searchsorted(ERROR_BINS, np.nan_to_num(e, nan=0.0), side="right") - 1, 0,
                               len(ERROR_COLORS) - 1)]  # fmt: skip
    bad = ~np.isfinite(e)
    if valid is not None:
        bad |= ~np.asarray(valid, bool)
    img[bad] = 0
    return img


def flow_panel(
    img1: np.ndarray,
    img2: np.ndarray,
    flow: np.ndarray | None = None,
    gt: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    max_flow: float | None = None,
    annotate: bool = False,
) -> np.ndarray:
    """frame1 | frame2 | flow | GT flow | error, side by side (RGB uint8); missing parts are left out.

    flow is a prediction, gt the ground truth (valid marks where it is known). With only gt, the
    panel is frame1 | frame2 | GT. One max_flow (default: the largest valid GT or flow vector) is used
    for both flow pictures so their colours compare. `annotate`: a title over each tile and a legend
    row below (colour wheel with its px scale, the error colour bar in px), see `annotate_panel`.
    """
    tiles: list[np.ndarray] = [img1, img2]
    titles = ["frame 1", "frame 2"]
    if max_flow is None:
        ref = gt if gt is not None else flow
        if ref is not None:
            mag = np.linalg.norm(np.nan_to_num(ref), axis=2)
            if valid is not None and gt is not None:
                mag = mag[np.asarray(valid, bool)]
            max_flow = float(mag.max()) if mag.size and mag.max() > 0 else 1.0
    if flow is not None:
        tiles.append(flow_to_color(flow, max_flow=max_flow))
        titles.append("flow")
    if gt is not None:
        tiles.append(flow_to_color(gt, valid, max_flow=max_flow))
        titles.append("ground truth")
    has_error = flow is not None and gt is not None
    if flow is not None and gt is not None:
        tiles.append(error_to_color(np.linalg.norm(flow - gt, axis=2), valid))
        titles.append("end-point error")
    if annotate:
        return annotate_panel(tiles, titles, max_flow if len(tiles) > 2 else None, error_legend=has_error)
    return hstack(tiles)


def wheel_legend(size: int = 64) -> np.ndarray:
    """The colour wheel as a (size, size) RGB disc: direction -> hue, |flow| -> saturation (rim = max_flow);
    white outside the disc. Vectors point from the centre, image axes (x right, y down)."""
    r = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / ((size - 1) / 2)
    u, v = np.meshgrid(r, r)
    disc = flow_to_color(np.stack([u, v], axis=2), max_flow=1.0)
    disc[u * u + v * v > 1.0] = 255
    return disc


def error_scale(width: int, height: int = 30) -> np.ndarray:
    """The error colour bar: one equal-width box per bin of error_to_color, its lower edges labelled in px
    (every other one, so they stay legible)."""
    import cv2

    bar_h = max(height - 14, 4)
    n = len(ERROR_COLORS)
    out = np.full((height, width, 3), 255, np.uint8)
    edges = np.linspace(0, width, n + 1).round().astype(int)
    for i in range(n):
        out[:bar_h, edges[i]:edges[i + 1]] = ERROR_COLORS[i]
    for i in range(0, n, 2):
        label = f"{ERROR_BINS[i]:g}" + (" px" if i == n - 2 else "")
        cv2.putText(out, label, (min(edges[i] + 1, width - 20), height - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.33,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def annotate_panel(tiles: Sequence[np.ndarray], titles: Sequence[str], max_flow: float | None = None,
                   error_legend: bool = False) -> np.ndarray:
    """Tiles side by side with a title over each, and below them a legend row: the colour wheel with
    the flow magnitude its rim stands for (when `max_flow`), the error colour bar in px (`error_legend`)."""
    import cv2
    from unsamflow.pipeline.show import titled

    body = hstack([titled(t, s) for t, s in zip(tiles, titles, strict=True)])
    width = body.shape[1]
    parts = []
    if max_flow is not None:
        wheel = wheel_legend(48)
        text = np.full((48, min(260, max(width - 48, 1)), 3), 255, np.uint8)
        cv2.putText(text, "hue: direction", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(text, f"rim: |flow| >= {max_flow:.3g} px", (6, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        parts += [wheel, text]
    if error_legend:
        scale = error_scale(min(300, width), 30)
        pad = np.full((48, scale.shape[1], 3), 255, np.uint8)
        pad[9:39] = scale
        parts += [np.full((48, 12, 3), 255, np.uint8), pad]
    if not parts:
        return body
    row = np.concatenate(parts, axis=1)[:, :width]
    row = np.concatenate([row, np.full((48, width - row.shape[1], 3), 255, np.uint8)], axis=1)
    return np.concatenate([body, np.full((4, width, 3), 255, np.uint8), row], axis=0)


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

