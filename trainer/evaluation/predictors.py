"""Flow predictors: anything called as (img1, img2, seg1, seg2) -> flow, so the network and the baselines
(zero flow, OpenCV DIS) go through one evaluator.

Images are H x W x 3 uint8 RGB (as pipeline.flow datasets yield them), segs H x W integer full_seg
labels or None, the flow H x W x 2 float32 in pixels (frame 1 -> frame 2). A predictor that needs
full_seg sets `needs_segs = True`; the evaluator then refuses to run it without masks.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.evaluation.padding import Padder, resize_flow, resize_images, resize_labels


class FlowPredictor(Protocol):
    name: str
    needs_segs: bool

    def __call__(
        self, img1: np.ndarray, img2: np.ndarray, seg1: np.ndarray | None, seg2: np.ndarray | None
    ) -> np.ndarray: ...


class ZeroFlow:
    """The trivial baseline: no motion. Its EPE is the mean GT magnitude."""

    name = "zero"
    needs_segs = False

    def __call__(self, img1, img2, seg1=None, seg2=None) -> np.ndarray:
        return np.zeros((*img1.shape[:2], 2), np.float32)


class DISFlow:
    """OpenCV's DIS optical flow (medium preset) on grey frames: a classical baseline with no training."""

    name = "dis"
    needs_segs = False

    def __init__(self, preset: int | None = None):
        import cv2

        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM if preset is None else preset)

    def __call__(self, img1, img2, seg1=None, seg2=None) -> np.ndarray:
        g1 = self._cv2.cvtColor(np.ascontiguousarray(img1), self._cv2.COLOR_RGB2GRAY)
        g2 = self._cv2.cvtColor(np.ascontiguousarray(img2), self._cv2.COLOR_RGB2GRAY)
        return self._dis.calc(g1, g2, None).astype(np.float32)


class NetworkPredictor:
    """A PWC-Lite network as a predictor: frames of any size are (optionally resized to `test_size`,)
    padded to the network's multiple of 64, and the flow is brought back to the frames' size.

    test_size: (H, W) to resize to first (the method's Sintel / KITTI protocol), or None for native.
    pad_mode: "center" or "bottom-right" replicate padding (see padding.py).
    """

    name = "model"
    source: str | None = None  # the checkpoint it came from, when loaded from one

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        test_size: tuple[int, int] | None = None,
        pad_mode: str = "center",
        multiple: int = 64,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.test_size = test_size
        self.pad_mode = pad_mode
        self.multiple = multiple
        Padder(1, 1, multiple, pad_mode)  # validates pad_mode now rather than at the first pair

    @property
    def needs_segs(self) -> bool:
        return getattr(self.model, "mask_features", None) is not None

    @torch.no_grad()
    def __call__(self, img1, img2, seg1=None, seg2=None) -> np.ndarray:
        if img1.shape != img2.shape:
            raise BadInputError(f"frames differ in size: {img1.shape[1]}x{img1.shape[0]} vs "
                                f"{img2.shape[1]}x{img2.shape[0]}")  # fmt: skip
        size = img1.shape[:2]
        x1, x2 = (_to_batch(i, self.device) for i in (img1, img2))
        s1 = s2 = None
        if self.needs_segs:
            if seg1 is None or seg2 is None:
                raise BadInputError("this model has mask features (+mf) and needs full_seg for both frames")
            s1, s2 = (torch.from_numpy(np.asarray(s, np.int64))[None].to(self.device) for s in (seg1, seg2))
        if self.test_size is not None:
            x1, x2 = resize_images(x1, self.test_size), resize_images(x2, self.test_size)
            if s1 is not None:
                s1, s2 = resize_labels(s1, self.test_size), resize_labels(s2, self.test_size)
        padder = Padder(*x1.shape[-2:], multiple=self.multiple, mode=self.pad_mode)
        if s1 is not None:
            s1, s2 = padder(s1), padder(s2)
        out = self.model(padder(x1), padder(x2), s1, s2, with_bw=False)
        flow = padder.crop(out["flows_fw"][0])
        flow = resize_flow(flow, size)
        return flow[0].permute(1, 2, 0).float().cpu().numpy()


def _to_batch(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """H x W x 3 uint8 -> (1, 3, H, W) float in [0, 1], the network's input."""
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255
