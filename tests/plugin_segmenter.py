"""A third-party segmenter as a user would write one, loaded as 'plugin_segmenter:make_grid'."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from unsamflow.pipeline.masks import rle_encode


class GridSegmenter:
    """Splits the frame into a k x k grid of masks (a stand-in for any SAM-style model)."""

    name = "grid"
    version = "1"

    def __init__(self, k: int = 2, lie_about_area: bool = False):
        self.k = k
        self.lie = lie_about_area

    def config(self) -> dict:
        return {"k": self.k}

    def __call__(self, image: np.ndarray) -> list[dict]:
        h, w = image.shape[:2]
        out = []
        for i in range(self.k):
            for j in range(self.k):
                m = np.zeros((h, w), bool)
                y0, y1 = i * h // self.k, (i + 1) * h // self.k
                x0, x1 = j * w // self.k, (j + 1) * w // self.k
                m[y0:y1, x0:x1] = True
                out.append({"segmentation": m, "area": int(m.sum()) + (7 if self.lie else 0),
                            "bbox": [x0, y0, x1 - 1 - x0, y1 - 1 - y0], "predicted_iou": 1.0,
                            "stability_score": 1.0, "point_coords": [[(x0 + x1) / 2, (y0 + y1) / 2]],
                            "crop_box": [0, 0, w, h]})
        return out


def make_grid(k: int = 2, lie_about_area: bool = False) -> GridSegmenter:
    return GridSegmenter(k, lie_about_area)


class BlockingSegmenter(GridSegmenter):
    """A grid segmenter that stops at its `block_at`-th frame until the file `release` exists.

    On reaching that frame it creates the file `reached`, so a test knows, without timing guesses,
    that the worker is inside a shard (earlier frames written to the temporary store, this one not).
    A process started after `release` exists (a retry) never blocks.
    """

    name = "blocking-grid"

    def __init__(self, reached: str, release: str, block_at: int = 2, k: int = 2, timeout_s: float = 120):
        super().__init__(k)
        self.reached, self.release = Path(reached), Path(release)
        self.block_at, self.timeout_s, self.calls = block_at, timeout_s, 0

    def __call__(self, image: np.ndarray) -> list[dict]:
        self.calls += 1
        if self.calls == self.block_at and not self.release.exists():
            self.reached.touch()
            deadline = time.monotonic() + self.timeout_s
            while not self.release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().__call__(image)


def make_blocking(reached: str, release: str, block_at: int = 2, k: int = 2) -> BlockingSegmenter:
    return BlockingSegmenter(reached, release, block_at, k)


class ManySegmenter:
    """n masks per frame as run lengths, like SAM's `uncompressed_rle` output: full-frame masks
    (block=0) or block x block squares along the diagonal. Never holds more than one full mask.

    fail_width: frames of this width raise `fail` (MemoryError or RuntimeError) instead.
    """

    name = "many"
    version = "1"

    def __init__(self, n: int = 50, block: int = 0, fail_width: int = 0, fail: str = "MemoryError"):
        self.n, self.block, self.fail_width, self.fail = n, block, fail_width, fail

    def config(self) -> dict:
        return {"n": self.n, "block": self.block}

    def __call__(self, image: np.ndarray) -> list[dict]:
        h, w = image.shape[:2]
        if w == self.fail_width or self.fail_width < 0:
            raise {"MemoryError": MemoryError, "RuntimeError": RuntimeError}[self.fail](
                f"plug-in failure on a {w}x{h} frame")
        out = []
        for i in range(self.n):
            m = np.zeros((h, w), bool)
            if self.block:
                y, x = (i * self.block) % max(1, h - self.block), (i * self.block) % max(1, w - self.block)
                m[y : y + self.block, x : x + self.block] = True
            else:
                m[:] = True
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
            out.append({"segmentation": rle_encode(m), "area": int(m.sum()), "bbox": bbox,
                        "predicted_iou": 1.0, "stability_score": 1.0,
                        "point_coords": [[float(xs[0]), float(ys[0])]], "crop_box": [0, 0, w, h]})
            del m
        return out


def make_many(n: int = 50, block: int = 0, fail_width: int = 0, fail: str = "MemoryError") -> ManySegmenter:
    return ManySegmenter(n, block, fail_width, fail)


class UnusableSegmenter(ManySegmenter):
    """ManySegmenter whose records for frames `bad_width` wide carry a score that is not a number."""

    name = "unusable"

    def __init__(self, bad_width: int = 0):
        super().__init__(n=3, block=4)
        self.bad_width = bad_width

    def __call__(self, image: np.ndarray) -> list[dict]:
        out = super().__call__(image)
        if image.shape[1] == self.bad_width or self.bad_width < 0:
            out[0]["predicted_iou"] = "high"
        return out


def make_unusable(bad_width: int = 0) -> UnusableSegmenter:
    return UnusableSegmenter(bad_width)
