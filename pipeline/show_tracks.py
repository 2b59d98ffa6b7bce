"""A strip of a sequence's frames with every track in its own colour: do the ids follow the objects?"""

from __future__ import annotations

import cv2
import numpy as np
from unsamflow.pipeline.show import titled

FRAME_WIDTH = 320  # each frame of the strip is drawn at most this wide
LABEL_AREA = 0.01  # masks covering at least this share of the frame carry their track number


def track_colour(track: int) -> tuple[int, int, int]:
    """One RGB colour per track id, the same in every frame and every picture."""
    rng = np.random.default_rng(int(track) & 0xFFFFFFFFFFFF)
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(170, 256)]]], np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def draw_tracks(image: np.ndarray, masks: np.ndarray, tracks: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The frame with each mask in its track's colour (largest first, so small ones stay visible), white
    outlines, and the track's number within its sequence on the larger masks."""
    out = image.astype(np.float32)
    order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
    for i in order:
        out[masks[i]] = (1 - alpha) * out[masks[i]] + alpha * np.array(track_colour(tracks[i]), np.float32)
    out = out.astype(np.uint8)
    h, w = image.shape[:2]
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    for i in order:
        area = int(masks[i].sum())
        if area >= LABEL_AREA * h * w:
            ys, xs = np.nonzero(masks[i])
            text = str(int(tracks[i]) & 0xFFFFFFFF)
            org = (int(xs.mean()) - 4 * len(text), int(ys.mean()) + 4)
            cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def track_strip(frames: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """One RGB picture: (frame id, image, masks, track ids) per frame, side by side in order."""
    panels = []
    for fid, image, masks, tracks in frames:
        panel = draw_tracks(image, masks, tracks)
        h, w = panel.shape[:2]
        if w > FRAME_WIDTH:
            panel = cv2.resize(panel, (FRAME_WIDTH, round(h * FRAME_WIDTH / w)), interpolation=cv2.INTER_AREA)
        panels.append(titled(panel, f"{fid.rsplit('/', 1)[-1]}: {len(set(tracks.tolist()))} tracks"))
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.hstack(panels)
