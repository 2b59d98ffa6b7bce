"""`sam2`: SAM 2 / SAM 2.1's automatic mask generator (`SAM2AutomaticMaskGenerator`) from a user-given
checkpoint. Needs the optional `sam2` package: `pip install 'unsamflow[sam2]'`.

Model types are the four official sizes, `tiny`, `small`, `base+` and `large`, of release `2.1` (the
current checkpoints, `sam2.1_hiera_*.pt`) or `2` (`sam2_hiera_*.pt`); the architecture comes from the
package's own YAML configs, built with hydra's `instantiate` as `sam2.build_sam.build_sam2` does (with
its default post-processing settings), but without hydra's global state and without its unchecked load.
`smoke` is a tiny randomly initialised SAM 2 built from the same config with a 5-block Hiera of width 16
and one memory-attention layer: its masks are meaningless; it exists to smoke-test a setup end to end
without a download (`write_smoke_sam2_checkpoint`).

Checkpoints (`{"model": state_dict}`, as released) are loaded with `torch.load(weights_only=True)` and
checked key by key and shape by shape against the chosen model type and release before any model is
built, so a wrong file fails with a message that says which model type and release it does fit.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.segmenters import amg_common as amg

BACKEND = "sam2"
EXTRA = "sam2"
# Bump when a change of this file changes the records for the same config.
WRAPPER_VERSION = 1

SAM2_MODEL_TYPES = ("tiny", "small", "base+", "large", "smoke")
SAM2_RELEASES = ("2.1", "2")
_SUFFIX = {"tiny": "t", "small": "s", "base+": "b+", "large": "l", "smoke": "t"}
# Official checkpoint file names, by (model_type, release): for messages and the README.
CHECKPOINT_NAMES = {
    (size, rel): f"sam{rel}_hiera_{size.replace('+', '_plus')}.pt"
    for size in ("tiny", "small", "base+", "large")
    for rel in SAM2_RELEASES
}

# What `build_sam2(..., apply_postprocessing=True)` adds to every image model.
_POSTPROCESSING = {
    "sam_mask_decoder_extra_args": {
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
}
# The smoke model: Hiera stages (1, 1, 2, 1) of width 16 (global attention in block 3, which does no
# pooling), one memory-attention layer and one fuser layer. The SAM heads are the standard ones.
_SMOKE = {
    "image_encoder": {
        "trunk": {"embed_dim": 16, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
        "neck": {"backbone_channel_list": [128, 64, 32, 16]},
    },
    "memory_attention": {"num_layers": 1},
    "memory_encoder": {"fuser": {"num_layers": 1}},
}


def _label(model_type: str, release: str) -> str:
    return "sam2 smoke" if model_type == "smoke" else f"sam{release} {model_type}"


def _config(model_type: str, release: str) -> Any:
    """The resolved OmegaConf model config of `model_type` and `release`, from the package's YAML."""
    amg.require("sam2", BACKEND, EXTRA)
    from omegaconf import OmegaConf

    rel = "2.1" if model_type == "smoke" else release
    name = f"sam{rel}/sam{rel}_hiera_{_SUFFIX[model_type]}.yaml"
    cfg = OmegaConf.load(str(importlib.resources.files("sam2") / "configs" / name))
    parts = [cfg, OmegaConf.create({"model": _POSTPROCESSING})]
    if model_type == "smoke":
        parts.append(OmegaConf.create({"model": _SMOKE}))
    cfg = OmegaConf.merge(*parts)
    OmegaConf.resolve(cfg)
    return cfg.model


def _check_type(model_type: str, release: str) -> None:
    if model_type not in SAM2_MODEL_TYPES:
        raise BadInputError(
            f"{BACKEND}: unknown model_type {model_type!r}; choose one of {', '.join(SAM2_MODEL_TYPES)}"
        )
    if release not in SAM2_RELEASES:
        raise BadInputError(
            f"{BACKEND}: unknown release {release!r}; choose one of {', '.join(SAM2_RELEASES)}"
        )


def build_sam2_model(model_type: str, release: str = "2.1") -> torch.nn.Module:
    """The SAM 2 architecture of `model_type` / `release`, randomly initialised, in eval mode."""
    _check_type(model_type, release)
    from hydra.utils import instantiate

    return instantiate(_config(model_type, release), _recursive_=True).eval()


def write_smoke_sam2_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised `smoke` SAM 2 as released checkpoints are: {"model": state_dict}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2_model("smoke")
    torch.save({"model": model.state_dict()}, path)
    return path


@functools.cache
def _expected_shapes(label: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a labelled model type, from a model built on the meta device (~1-3 s)."""
    model_type, release = _from_label(label)
    return amg.shapes_of(lambda: build_sam2_model(model_type, release))


def _from_label(label: str) -> tuple[str, str]:
    if label == "sam2 smoke":
        return "smoke", "2.1"
    rel, size = label[len("sam"):].split(" ")
    return size, rel


# Cheap fingerprints (Hiera width, number of blocks, SAM 2.1's extra parameter), so that a hint about
# which model a wrong checkpoint is tries one candidate rather than building all nine.
_WIDTH_BLOCKS = {
    "tiny": (96, 12), "small": (96, 16), "base+": (112, 24), "large": (144, 48), "smoke": (16, 5)
}


def _candidates(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    width = shapes.get("image_encoder.trunk.pos_embed", (0, 0))[1]
    blocks = len({k.split(".")[3] for k in shapes if k.startswith("image_encoder.trunk.blocks.")})
    release = "2.1" if "no_obj_embed_spatial" in shapes else "2"
    return [
        _label(size, release) for size, wb in _WIDTH_BLOCKS.items() if wb == (width, blocks)
    ]


def load_sam2_state_dict(
    path: str | Path, model_type: str, release: str = "2.1", mmap: bool = False
) -> dict[str, torch.Tensor]:
    """Load a SAM 2 checkpoint without executing code and check it fits; BadInputError if not."""
    _check_type(model_type, release)
    amg.require("sam2", BACKEND, EXTRA)
    label = _label(model_type, release)
    return amg.load_checked_state_dict(
        path, BACKEND, label, _expected_shapes, [label], mmap=mmap, nested_key="model", describe=_describe
    )


def _describe(shapes: dict[str, tuple[int, ...]]) -> str:
    """Which model type and release a checkpoint's shapes are, for the error about a mismatch."""
    fits = [c for c in _candidates(shapes) if not amg.mismatch(shapes, _expected_shapes(c))]
    if not fits:
        return "it matches no SAM 2 model type of either release"
    size, rel = _from_label(fits[0])
    return f"it is a {fits[0]} checkpoint (model_type={size!r}, release={rel!r})"


class Sam2Segmenter:
    """SAM 2's SAM2AutomaticMaskGenerator behind the Segmenter contract (needs 'unsamflow[sam2]').

    Arguments:
      checkpoint: path to a SAM 2 checkpoint (e.g. sam2.1_hiera_large.pt, or one made by
        `write_smoke_sam2_checkpoint` for `smoke`).
      model_type: tiny, small, base+ or large (or smoke); must match the checkpoint.
      release: "2.1" (sam2.1_hiera_*.pt) or "2" (sam2_hiera_*.pt); must match the checkpoint.
      device: "auto" (the worker's device, else cuda if available, else cpu) or a torch device string.
      bfloat16: run the model under torch.autocast(bfloat16), as SAM 2's own examples do on a GPU.
      points_per_side ... multimask_output: SAM2AutomaticMaskGenerator's options, with its defaults
        (see its docstring; use_m2m refines each mask with a second, mask-prompted pass); output_mode
        is always "binary_mask" in the stored config.
    Masks with no pixel (possible only with thresholds lowered to 0) are not returned.
    """

    name = "sam2"

    def __init__(
        self,
        checkpoint: str | Path,
        model_type: str = "large",
        release: str = "2.1",
        device: str = "auto",
        bfloat16: bool = False,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        use_m2m: bool = False,
        multimask_output: bool = True,
    ) -> None:
        amg.check_point_counts(BACKEND, points_per_side, points_per_batch)
        amg.require("sam2", BACKEND, EXTRA)
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        self.checkpoint = Path(checkpoint)
        self.model_type = model_type
        self.release = "2.1" if model_type == "smoke" else release
        self.device = amg.resolve_device(device, BACKEND)
        self.bfloat16 = bool(bfloat16)
        self.options: dict[str, Any] = {
            "points_per_side": int(points_per_side),
            "points_per_batch": int(points_per_batch),
            "pred_iou_thresh": float(pred_iou_thresh),
            "stability_score_thresh": float(stability_score_thresh),
            "stability_score_offset": float(stability_score_offset),
            "mask_threshold": float(mask_threshold),
            "box_nms_thresh": float(box_nms_thresh),
            "crop_n_layers": int(crop_n_layers),
            "crop_nms_thresh": float(crop_nms_thresh),
            "crop_overlap_ratio": float(crop_overlap_ratio),
            "crop_n_points_downscale_factor": int(crop_n_points_downscale_factor),
            "min_mask_region_area": int(min_mask_region_area),
            "use_m2m": bool(use_m2m),
            "multimask_output": bool(multimask_output),
        }
        state = load_sam2_state_dict(self.checkpoint, model_type, self.release)
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        model = build_sam2_model(model_type, self.release)
        model.load_state_dict(state)
        del state
        self.model = model.to(self.device).eval()
        # Run lengths, not bool masks: see sam.SamSegmenter (N x H x W bytes at full resolution).
        self.generator = SAM2AutomaticMaskGenerator(
            self.model, output_mode="uncompressed_rle", **self.options
        )
        self.version = (
            f"sam2/{WRAPPER_VERSION} sam2/{importlib.metadata.version('sam2')} torch/{torch.__version__}"
        )

    @staticmethod
    def check_options(
        checkpoint: str | Path, model_type: str = "large", release: str = "2.1", **_options: Any
    ) -> None:
        """Before any cluster starts: the package is there and the checkpoint fits the model type.

        The checkpoint is memory-mapped, so this reads its key table, not its weights.
        """
        load_sam2_state_dict(checkpoint, model_type, "2.1" if model_type == "smoke" else release, mmap=True)

    def config(self) -> dict[str, Any]:
        # The device is left out on purpose: workers on different GPUs must write the same config.
        return {
            "model_type": self.model_type,
            "release": self.release,
            "checkpoint": self.checkpoint.name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "bfloat16": self.bfloat16,
            **self.options,
            "output_mode": "binary_mask",
        }

    def peak_bytes(self, shape: tuple[int, int]) -> int:
        """About the most host memory the generator takes for a frame of `shape` (its full-resolution
        batch of points_per_batch x (3 or 1) candidate masks)."""
        per_point = 3 if self.options["multimask_output"] else 1
        return amg.peak_candidate_bytes(self.device, self.options["points_per_batch"] * per_point, shape)

    def __call__(self, image: np.ndarray) -> list[dict[str, Any]]:
        return amg.decode_records(self.segment_compact(image))

    def segment_compact(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The records with each "segmentation" as uncompressed RLE ({"size": [h, w], "counts": [...]},
        column-major), so that no full-resolution mask needs to exist."""
        amg.check_image(image, BACKEND)
        with torch.inference_mode(), torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16
        ):
            raw = self.generator.generate(image)
        return amg.compact_records(raw)
