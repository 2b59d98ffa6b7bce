"""The `sam2` linker: SAM 2's video predictor carries each frame's masks to the next frame.

For each pair of frames, the live tracks' masks are given to SAM 2's video predictor as mask prompts on
the first frame; its memory attention propagates them to the second, and those predicted masks are
matched to the second frame's masks by IoU as the flow linker matches its carried estimates
(pipeline.linker). The model is the `sam2` segmenter's (same model types, releases and checkpoint
checks, pipeline.segmenters.sam2), built as `sam2.build_sam.build_sam2_video_predictor` builds it with
its default post-processing. Needs the optional `sam2` package: `pip install 'unsamflow[sam2]'`.
Frames reach the predictor as JPEG files of a temporary folder, the input its `init_state` takes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import scipy.sparse as sp
import torch
from unsamflow.pipeline.segmenters import amg_common as amg

# What build_sam2_video_predictor(apply_postprocessing=True) sets beyond the image model.
_VIDEO = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
}


def build_video_predictor(checkpoint: str | Path, model_type: str, release: str = "2.1",
                          device: str = "auto"):
    """SAM 2's video predictor with the checked weights of `checkpoint`, in eval mode on `device`."""
    from unsamflow.pipeline.segmenters.sam2 import BACKEND, EXTRA, _config, load_sam2_state_dict

    amg.require("sam2", BACKEND, EXTRA)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    release = "2.1" if model_type == "smoke" else release
    state = load_sam2_state_dict(checkpoint, model_type, release)
    cfg = OmegaConf.merge(_config(model_type, release), OmegaConf.create(_VIDEO))
    model = instantiate(cfg, _recursive_=True)
    model.load_state_dict(state)
    return model.to(amg.resolve_device(device, BACKEND)).eval()


class Sam2Carrier:
    """carry(estimates, old, new) for pipeline.linker.link_sequence, through SAM 2's video predictor."""

    def __init__(self, checkpoint: str, model_type: str = "large", release: str = "2.1",
                 device: str = "auto"):
        self.predictor = build_video_predictor(checkpoint, model_type, release, device)

    @torch.inference_mode()
    def __call__(self, est: sp.csr_matrix, old: np.ndarray, new: np.ndarray) -> sp.csr_matrix:
        H, W = old.shape[:2]
        p = self.predictor
        with tempfile.TemporaryDirectory(prefix="unsamflow-sam2-") as tmp:
            for k, img in enumerate((old, new)):
                cv2.imwrite(str(Path(tmp) / f"{k:05d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
            state = p.init_state(tmp)
        for k in range(est.shape[0]):
            mask = np.zeros(H * W, bool)
            mask[est.indices[est.indptr[k] : est.indptr[k + 1]]] = True
            p.add_new_mask(state, frame_idx=0, obj_id=k, mask=mask.reshape(H, W))
        carried = np.zeros((est.shape[0], H * W), bool)
        for frame_idx, obj_ids, logits in p.propagate_in_video(state):
            if frame_idx == 1:
                masks = (logits[:, 0] > 0).cpu().numpy().reshape(len(obj_ids), -1)
                carried[np.asarray(obj_ids, np.int64)] = masks
        out = sp.csr_matrix(carried.astype(np.int32))
        out.eliminate_zeros()
        return out
