"""ARFlow's second pass on batched tensors: appearance, spatial and occlusion-crop augmentation with the
pseudo-label carried through, and the key-object cache of the semantic (+aug) augmentation.

Every transform is draw_*_params(generator, ...) then apply_*(tensors, params), so a seed replays it;
draws run on the generator's device (a CPU generator is the intended use) and move to the batch's.
"""

from unsamflow.trainer.augment.appearance import (
    AppearanceParams,
    appearance,
    apply_appearance,
    draw_appearance_params,
)
from unsamflow.trainer.augment.configs import (
    CROP_PRESETS,
    SPATIAL_PRESETS,
    AppearanceConfig,
    KeyObjectConfig,
    SpatialConfig,
)
from unsamflow.trainer.augment.key_objects import KeyObjectCache, PasteParams, place
from unsamflow.trainer.augment.occlusion import apply_crop, crop_batch, draw_crop_params, occlusion_crop
from unsamflow.trainer.augment.spatial import (
    AffineParams,
    SpatialParams,
    affine_matrices,
    apply_spatial,
    draw_spatial_params,
    spatial_pass,
)
from unsamflow.trainer.augment.types import AugmentedPair

__all__ = [
    "CROP_PRESETS",
    "SPATIAL_PRESETS",
    "AffineParams",
    "AppearanceConfig",
    "AppearanceParams",
    "AugmentedPair",
    "KeyObjectCache",
    "KeyObjectConfig",
    "PasteParams",
    "SpatialConfig",
    "SpatialParams",
    "affine_matrices",
    "appearance",
    "apply_appearance",
    "apply_crop",
    "apply_spatial",
    "crop_batch",
    "draw_appearance_params",
    "draw_crop_params",
    "draw_spatial_params",
    "occlusion_crop",
    "place",
    "spatial_pass",
]
