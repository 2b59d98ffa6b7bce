"""`sam-hq`: HQ-SAM's automatic mask generator (segment-anything-hq) from a user-given checkpoint.
Needs the optional `segment-anything-hq` package: `pip install 'unsamflow[sam-hq]'`.

HQ-SAM is SAM with an extra output token and a fusion of early ViT features in the mask decoder, for
sharper boundaries (which matter for flow at motion boundaries). Model types are the package's `vit_h`,
`vit_l`, `vit_b` and `vit_tiny` (Light HQ-SAM, a TinyViT encoder), plus `smoke`: a tiny randomly
initialised HQ-SAM built from the same classes (ViT encoder of depth 2 and width 64, a depth-1 two-way
transformer in the HQ decoder) for end-to-end smoke tests without a download
(`write_smoke_sam_hq_checkpoint`).

The package's own builders load checkpoints with a plain `torch.load` and `strict=False`, so a wrong
file would load silently with random weights. Here a checkpoint is loaded with
`torch.load(weights_only=True)` and checked key by key and shape by shape against the model type first.
"""

from __future__ import annotations

import functools
import importlib.metadata
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.segmenters import amg_common as amg

BACKEND = "sam-hq"
EXTRA = "sam-hq"
# Bump when a change of this file changes the records for the same config.
WRAPPER_VERSION = 1

SAM_HQ_MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_tiny", "smoke")
# Light HQ-SAM's TinyViT keeps an ImageNet classification head that segmentation never runs; a released
# file may leave it out.
_UNUSED_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")


def _package() -> Any:
    return amg.require("segment_anything_hq", BACKEND, EXTRA)


def _build_smoke() -> torch.nn.Module:
    """As segment-anything-hq's `_build_sam`, with a tiny encoder and a depth-1 decoder transformer."""
    _package()
    from segment_anything_hq.modeling import (
        ImageEncoderViT,
        MaskDecoderHQ,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    prompt_embed_dim, image_size, patch_size, width = 256, 1024, 16, 64
    embedding_size = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=width,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),  # HQ fuses the first global block's output: keep one
            window_size=14,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            vit_dim=width,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam_hq_model(model_type: str) -> torch.nn.Module:
    """The HQ-SAM architecture of `model_type`, randomly initialised, in eval mode."""
    if model_type not in SAM_HQ_MODEL_TYPES:
        raise BadInputError(
            f"{BACKEND}: unknown model_type {model_type!r}; choose one of {', '.join(SAM_HQ_MODEL_TYPES)}"
        )
    if model_type == "smoke":
        return _build_smoke().eval()
    return _package().sam_model_registry[model_type](checkpoint=None).eval()


def write_smoke_sam_hq_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save the state_dict of a randomly initialised `smoke` HQ-SAM (deterministic in `seed`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam_hq_model("smoke")
    torch.save(model.state_dict(), path)
    return path


@functools.cache
def _expected_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    return amg.shapes_of(lambda: build_sam_hq_model(model_type))


def load_sam_hq_state_dict(path: str | Path, model_type: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load an HQ-SAM checkpoint without executing code and check it fits `model_type`."""
    if model_type in SAM_HQ_MODEL_TYPES:
        _package()
    return amg.load_checked_state_dict(
        path, BACKEND, model_type, _expected_shapes, SAM_HQ_MODEL_TYPES, mmap=mmap,
        optional_prefixes=_UNUSED_PREFIXES, describe=_describe,
    )


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    fits = [t for t in SAM_HQ_MODEL_TYPES if not amg.mismatch(shapes, _expected_shapes(t), _UNUSED_PREFIXES)]
    if fits:
        return f"it is a {fits[0]} checkpoint"
    if not any(k.startswith("mask_decoder.hf_token") for k in shapes):
        return "it has no HQ-SAM decoder (hf_token): an original SAM checkpoint? use --segmenter sam"
    return f"it matches none of {', '.join(SAM_HQ_MODEL_TYPES)}"


class SamHqSegmenter:
    """HQ-SAM's SamAutomaticMaskGenerator behind the Segmenter contract (needs 'unsamflow[sam-hq]').

    Arguments:
      checkpoint: path to an HQ-SAM state_dict (e.g. sam_hq_vit_h.pth, or one made by
        `write_smoke_sam_hq_checkpoint` for `smoke`).
      model_type: vit_h, vit_l, vit_b, vit_tiny (Light HQ-SAM) or smoke; must match the checkpoint.
      device: "auto" (the worker's device, else cuda if available, else cpu) or a torch device string.
      points_per_side ... min_mask_region_area: the generator's options, with its defaults (see its
        docstring); multimask_output: the argument of its generate(). HQ-SAM gives one mask per point
        either way: its HQ mask added to the best of SAM's three (True) or to SAM's single mask (False).
        output_mode is "binary_mask" in the stored config.
    Masks with no pixel (possible only with thresholds lowered to 0) are not returned.
    """

    name = "sam-hq"

    def __init__(
        self,
        checkpoint: str | Path,
        model_type: str = "vit_h",
        device: str = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        multimask_output: bool = True,
    ) -> None:
        amg.check_point_counts(BACKEND, points_per_side, points_per_batch)
        pkg = _package()
        self.checkpoint = Path(checkpoint)
        self.model_type = model_type
        self.device = amg.resolve_device(device, BACKEND)
        self.multimask_output = bool(multimask_output)
        self.options: dict[str, Any] = {
            "points_per_side": int(points_per_side),
            "points_per_batch": int(points_per_batch),
            "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "stability_score_offset": float(stability_score_offset),
            "box_nms_thresh": float(box_nms_thresh),
            "crop_n_layers": int(crop_n_layers),
            "crop_nms_thresh": float(crop_nms_thresh),
            "crop_overlap_ratio": float(crop_overlap_ratio),
            "crop_n_points_downscale_factor": int(crop_n_points_downscale_factor),
            "min_mask_region_area": int(min_mask_region_area),
        }
        state = load_sam_hq_state_dict(self.checkpoint, model_type)
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        model = build_sam_hq_model(model_type)
        # strict, except for Light HQ-SAM's unused TinyViT head, which the check above lets a file omit
        model.load_state_dict(state, strict=model_type != "vit_tiny")
        del state
        self.model = model.to(self.device).eval()
        # Run lengths, not bool masks: see sam.SamSegmenter (N x H x W bytes at full resolution).
        self.generator = pkg.SamAutomaticMaskGenerator(
            self.model, output_mode="uncompressed_rle", **self.options
        )
        package_version = importlib.metadata.version("segment-anything-hq")
        self.version = (
            f"sam-hq/{WRAPPER_VERSION} segment-anything-hq/{package_version} torch/{torch.__version__}"
        )

    @staticmethod
    def check_options(checkpoint: str | Path, model_type: str = "vit_h", **_options: Any) -> None:
        """Before any cluster starts: the package is there and the checkpoint fits the model type.

        The checkpoint is memory-mapped, so this reads its key table, not its weights.
        """
        load_sam_hq_state_dict(checkpoint, model_type, mmap=True)

    def config(self) -> dict[str, Any]:
        # The device is left out on purpose: workers on different GPUs must write the same config.
        return {
            "model_type": self.model_type,
            "checkpoint": self.checkpoint.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            **self.options,
            "multimask_output": self.multimask_output,
            "output_mode": "binary_mask",
        }

    def peak_bytes(self, shape: tuple[int, int]) -> int:
        """About the most host memory the generator takes for a frame of `shape` (its full-resolution
        batch: one candidate mask per point, see multimask_output)."""
        return amg.peak_candidate_bytes(self.device, self.options["points_per_batch"], shape)

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        return amg.decode_records(self.segment_compact(image))

    def segment_compact(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The records with each "segmentation" as uncompressed RLE ({"size": [h, w], "counts": [...]},
        column-major), so that no full-resolution mask needs to exist."""
        amg.check_image(image, BACKEND)
        with torch.inference_mode():
            raw = self.generator.generate(image, multimask_output=self.multimask_output)
        return amg.compact_records(raw)
