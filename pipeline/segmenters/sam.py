"""`sam`: segment-anything's automatic mask generator from a user-given checkpoint.

Model types are segment-anything's `vit_h`, `vit_l` and `vit_b`, plus `vit_tiny`: a tiny randomly
initialised SAM built from the same modeling classes (ViT encoder of depth 2 and width 64, the standard
256-d prompt encoder, a mask decoder with a depth-1 two-way transformer). Its masks are meaningless; it
exists to smoke-test GPU, cluster and store setups end to end without a 2.5 GB download
(`write_tiny_sam_checkpoint`).

Checkpoints are loaded with `torch.load(weights_only=True)` (no code runs) and checked key by key and
shape by shape against the chosen model type before any real model is built, so a wrong file or a wrong
`model_type` fails with a message that says which model type the file does fit.
"""

from __future__ import annotations

import importlib.metadata
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.segmenters import amg_common as amg

# Bump when a change of this file changes the records for the same config.
WRAPPER_VERSION = 1


def _build_vit_tiny() -> Sam:
    """Same composition as segment-anything's `_build_sam`, with a tiny encoder and a depth-1 decoder."""
    prompt_embed_dim, image_size, patch_size = 256, 1024, 16
    embedding_size = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=14,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


# Model type -> constructor of the randomly initialised architecture (weights come from the checkpoint).
SAM_MODEL_TYPES = {
    "vit_h": sam_model_registry["vit_h"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_b": sam_model_registry["vit_b"],
    "vit_tiny": _build_vit_tiny,
}


_TYPES = ", ".join(SAM_MODEL_TYPES)


def build_sam_model(model_type: str) -> Sam:
    """The architecture of `model_type`, randomly initialised, in eval mode."""
    if model_type not in SAM_MODEL_TYPES:
        raise BadInputError(f"sam: unknown model_type {model_type!r}; choose one of {_TYPES}")
    return SAM_MODEL_TYPES[model_type]().eval()


def write_tiny_sam_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save the state_dict of a randomly initialised `vit_tiny` SAM (deterministic in `seed`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam_model("vit_tiny")
    torch.save(model.state_dict(), path)
    return path


def load_sam_state_dict(path: str | Path, model_type: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint without executing code and check it fits `model_type`; BadInputError if not.

    mmap: map the file instead of reading it (for checks that need only the keys and shapes).
    """
    return amg.load_checked_state_dict(
        path, "sam", model_type, _expected_shapes, SAM_MODEL_TYPES, mmap=mmap, describe=_describe,
        list_keys=False,
    )


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    """Which model type a mismatching file fits (the one asked for cannot: it mismatched)."""
    fits = [t for t in SAM_MODEL_TYPES if not amg.mismatch(shapes, _expected_shapes(t))]
    return f"it is a {fits[0]} checkpoint" if fits else f"it matches none of {sorted(SAM_MODEL_TYPES)}"


class SamSegmenter:
    """segment-anything's SamAutomaticMaskGenerator behind the Segmenter contract.

    Arguments:
      checkpoint: path to a SAM state_dict (e.g. sam_vit_h_4b8939.pth, or one made by
        `write_tiny_sam_checkpoint` for `vit_tiny`).
      model_type: one of vit_h, vit_l, vit_b, vit_tiny; must match the checkpoint.
      device: "auto" (cuda if available, else cpu) or a torch device string such as "cuda:1".
      points_per_side ... min_mask_region_area: SamAutomaticMaskGenerator's options, with its defaults
        (see its docstring); output_mode is always "binary_mask".
    The model is built and loaded once here; each call runs the generator under torch.inference_mode.
    Masks with no pixel (possible only with thresholds lowered to 0) are not returned.
    """

    name = "sam"

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
    ) -> None:
        amg.check_point_counts("sam", points_per_side, points_per_batch)
        self.checkpoint = Path(checkpoint)
        self.model_type = model_type
        self.device = _resolve_device(device)
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
        state = load_sam_state_dict(self.checkpoint, model_type)
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        model = build_sam_model(model_type)
        model.load_state_dict(state)
        del state
        self.model = model.to(self.device).eval()
        # Run lengths, not bool masks: the generator holds every mask of a frame at once, and at full
        # resolution that is N x H x W bytes (29 GB for 458 masks of 8000 x 8000). The segment stage
        # takes the run lengths (segment_compact); __call__ decodes them for the record contract.
        self.generator = SamAutomaticMaskGenerator(self.model, output_mode="uncompressed_rle", **self.options)
        self.version = (
            f"sam/{WRAPPER_VERSION} segment-anything/{importlib.metadata.version('segment-anything')} "
            f"torch/{torch.__version__}"
        )

    @staticmethod
    def check_options(checkpoint: str | Path, model_type: str = "vit_h", **_options: Any) -> None:
        """Before any cluster starts: the model type exists and the checkpoint is one of its kind.

        The checkpoint is memory-mapped, so this reads its key table, not its 2.5 GB of weights.
        """
        load_sam_state_dict(checkpoint, model_type, mmap=True)

    def config(self) -> dict[str, Any]:
        # The device is left out on purpose: workers on different GPUs must write the same config.
        return {
            "model_type": self.model_type,
            "checkpoint": self.checkpoint.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            **self.options,
            "output_mode": "binary_mask",
        }

    def peak_bytes(self, shape: tuple[int, int]) -> int:
        """About the most host memory the generator takes for a frame of `shape` (its full-resolution
        batch). On a GPU the batch lives in device memory: CUDA's own out-of-memory error bounds it,
        and the segment stage records such a frame as bad."""
        # Candidates in flight: points_per_batch x 3 (multimask output).
        return amg.peak_candidate_bytes(self.device, self.options["points_per_batch"] * 3, shape)

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        return amg.decode_records(self.segment_compact(image))

    def segment_compact(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The records with each "segmentation" as uncompressed RLE ({"size": [h, w], "counts": [...]},
        column-major), so that no full-resolution mask needs to exist."""
        amg.check_image(image, "sam")
        with torch.inference_mode():
            raw = self.generator.generate(image)
        return amg.compact_records(raw, round_boxes=False)


def _expected_shapes(model_type: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of `model_type`, from a model built on the meta device (no memory, ~0.1 s)."""
    return amg.shapes_of(SAM_MODEL_TYPES[model_type])


def _resolve_device(device: str) -> torch.device:
    """"auto": the device the cluster gave this worker ($UNSAMFLOW_DEVICE: "cuda:0" on a worker pinned
    to one GPU, "cpu" on a CPU worker, so a CPU worker never grabs a GPU), else cuda when available."""
    return amg.resolve_device(device, "sam")
