"""Pictures of a frame's masks: what people look at to trust (or distrust) a mask store."""

from __future__ import annotations

import cv2
import numpy as np


def label_colours(n: int, seed: int = 7) -> np.ndarray:
    """n distinct-ish RGB colours, stable for a given n (label 0 of a segmentation is drawn black)."""
    if n <= 0:  # a frame with no masks (all black, 1x1): OpenCV refuses an empty colour conversion
        return np.zeros((0, 3), np.uint8)
    rng = np.random.default_rng(seed)
    hsv = np.stack(
        [rng.permutation(np.linspace(0, 179, max(n, 1), endpoint=False)).astype(np.uint8)[:n],
         rng.integers(150, 256, n, dtype=np.uint8), rng.integers(170, 256, n, dtype=np.uint8)], axis=1
    )
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Every mask in its own colour over the image, largest first so small ones stay visible."""
    out = image.astype(np.float32)
    colours = label_colours(len(masks)).astype(np.float32)
    order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
    for i in order:
        m = masks[i]
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
    out = out.astype(np.uint8)
    for i in order:
        contours, _ = cv2.findContours(masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def label_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose left or upper neighbour has another label."""
    edges = np.zeros(labels.shape, bool)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edges


def draw_labels(full_seg: np.ndarray) -> np.ndarray:
    """A label map in colour; background (0) black, region borders white."""
    colours = label_colours(int(full_seg.max()) + 1)
    colours[0] = 0
    out = colours[full_seg]
    out[label_edges(full_seg)] = 255
    return out


def draw_key_objects(
    image: np.ndarray, masks: np.ndarray, bboxes: np.ndarray, keys: np.ndarray
) -> np.ndarray:
    """The image dimmed, key objects bright in colour with their boxes."""
    out = (image.astype(np.float32) * 0.35).astype(np.uint8)
    colours = label_colours(max(len(keys), 1))
    for c, k in enumerate(keys):
        m = masks[k]
        out[m] = (0.4 * image[m] + 0.6 * colours[c]).astype(np.uint8)
        x, y, w, h = (int(round(v)) for v in bboxes[k])
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), tuple(int(v) for v in colours[c]), 2)
    return out


def titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((28, panel.shape[1], 3), 32, np.uint8)
    cv2.putText(bar, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def frame_picture(image, masks, bboxes, full_seg, keys, frame_id: str, max_width: int = 1024) -> np.ndarray:
    """One RGB picture: masks over the image | full segmentation | key objects."""
    panels = [
        titled(draw_masks(image, masks), f"{frame_id}: {len(masks)} masks"),  # the full id: names repeat
        titled(draw_labels(full_seg), f"full_seg: {int(full_seg.max()) + 1} labels"),
        titled(draw_key_objects(image, masks, bboxes, keys), f"{len(keys)} key objects"),
    ]
    h, w = panels[0].shape[:2]
    if w > max_width:
        size = (max_width, round(h * max_width / w))
        panels = [cv2.resize(p, size, interpolation=cv2.INTER_AREA) for p in panels]
    return np.hstack(panels)


def safe_name(frame_id: str) -> str:
    return frame_id.replace("/", "__").rsplit(".", 1)[0] + ".png"
