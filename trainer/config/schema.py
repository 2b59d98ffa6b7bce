"""The training configuration: one frozen dataclass per section, validated on construction.

Why plain dataclasses (and not OmegaConf/pydantic): no extra dependency, the schema is ordinary Python
a reader (and a type checker) follows, values are immutable once built, and the error messages are ours
and exact - each names the key path and the allowed values (`optim.lr: must be > 0, got -1`). YAML
reading, preset inheritance and command-line overrides live in loader.py; the field machinery
(conversion by type hint, range checks) in fields.py.

Defaults are the published UnSAMFlow/ARFlow values where they do not depend on the dataset; the presets
(presets/*.yaml) set the dataset-specific ones. Sizes are (height, width).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.augment.configs import AppearanceConfig, KeyObjectConfig, SpatialConfig
from unsamflow.trainer.config.fields import (
    ConfigError,
    Section,
    all_of,
    at_least,
    each,
    field,
    greater,
    ordered_pairs,
    within,
)

CONFIG_VERSION = 1  # bump when a key changes meaning or disappears; old checkpoints' configs then fail
SIZE_MULTIPLE = 64  # PWC-Lite's coarsest level is 1/64: training crops must be multiples of it
MAX_LEVELS = 6  # PWCLite accepts num_levels 1..6 (pyramid levels); 5 is the published setting


def _sizes(v: tuple[int, int]) -> str | None:
    if any(x <= 0 or x % SIZE_MULTIPLE for x in v):
        return f"must be positive multiples of {SIZE_MULTIPLE} (the network's coarsest level), got {list(v)}"
    return None


def _positive(v: tuple[int, int]) -> str | None:
    return None if all(x > 0 for x in v) else f"must be positive, got {list(v)}"


def _data_schedule(spec: str) -> str | None:
    """A mix, or phases of mixes ('kitti-raw > 0.5 kitti-2015-multiview+kitti-2012-multiview')."""
    from unsamflow.trainer.data.mixes import parse_phases  # one grammar; lazy, as it brings torch

    try:
        parse_phases(spec)
    except BadInputError as exc:
        return str(exc)
    return None


def _dataset_spec(spec: str) -> str | None:
    """A mix in trainer/data's grammar ('sintel-clean+sintel-final', 'kitti-2015-multiview*2+...')."""
    from unsamflow.trainer.data.mixes import parse_mix  # one grammar; lazy, as it brings torch

    try:
        parse_mix(spec)
    except BadInputError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class DataConfig(Section):
    """Training frames and their masks; the loader's co-transforms (crop, flips, swap).

    roots / masks map a dataset to its root folder / mask-store directory; a key may be the component as
    written, its full name or its layout (`sintel`, `kitti2015`, `synthetic`), the most specific
    winning (trainer/data/mixes.py), so one mapping serves the training and the validation sets.
    Paths are per machine: `data.roots.kitti2015=/data/KITTI2015`, or `data.roots=/data/KITTI2015` for every
    component (the key `*`). masks null: no stores.
    """

    # a mix (names joined by '+', NAME*N repeats), or phases: 'kitti-raw > 0.5 kitti-2015-multiview+...'
    dataset: str = field("synthetic", check=_data_schedule)
    roots: dict[str, str] = field(factory=dict)
    masks: dict[str, str] | None = None
    # frames resized to (h, w) before the crop (KITTI: whole frames zoomed to 256 x 832); null: native size
    resize: tuple[int, int] | None = field(None, check=lambda v: None if v is None else _positive(v))
    crop: tuple[int, int] = field((256, 832), check=_sizes)  # random crop (h, w)
    hflip: bool = True  # random horizontal flip of the pair
    vflip: bool = False  # random vertical flip of the pair
    swap: bool = True  # random swap of the frame order
    max_key_objects: int = field(8, check=at_least(0))  # K of the batch's key_masks
    workers: int = field(4, check=at_least(0))  # DataLoader worker processes
    check: Literal["hash", "size", "none"] = "hash"  # how frame files are compared with their stores
    val_dataset: str | None = field(None, check=_dataset_spec)  # evaluated every logging.eval_every


@dataclass(frozen=True)
class ModelConfig(Section):
    """PWCLite's constructor arguments, and the weights a new run starts from."""

    mask_features: bool = False  # the mask feature module (+mf)
    search_range: int = field(4, check=within(1, 8))
    num_levels: int = field(5, check=within(1, MAX_LEVELS))
    # fine-tuning: a checkpoint whose network weights (only) a new run starts from; a resumed run ignores it
    init_from: str | None = None
    init_strict: bool = True  # every weight must match by name and shape; false: load the matching ones
    # "pytorch": PyTorch's default initialisation, what the reference effectively trains from (see PWCLite);
    # "kaiming": ARFlow's He-normal weights (untrained flows ~20x larger).
    init: Literal["pytorch", "kaiming"] = "pytorch"
    # Centre and unit-scale the features entering each cost volume (UFlow's feature normalisation; see
    # PWCLite). Off in the reference and its presets; on in cpu-small and cpu-demo, where the raw cost volume
    # keeps an untrained network at zero flow's level for longer than a CPU run lasts.
    normalize_corr_features: bool = False


@dataclass(frozen=True)
class HomographyLossConfig(Section):
    """Homography smoothness (+hg); its weight is per stage (stages.N.w_hg)."""

    ransac_thresh: float = field(3.0, check=greater(0))  # px: KITTI 0.5, Sintel 3
    num_regions: int = field(6, check=at_least(1))  # regions with the most occluded pixels, per image
    min_inlier_rate: float = field(0.5, check=within(0, 1))
    min_visible: int = field(4, check=at_least(4))  # a homography needs 4 correspondences
    min_visible_frac: float = field(0.2, check=within(0, 1))
    num_hypotheses: int = field(128, check=at_least(1))  # RANSAC samples per region


@dataclass(frozen=True)
class AugLossConfig(Section):
    """(|pred - pseudo| + eps)^q over non-occluded pixels, for the spatial and occlusion passes."""

    eps: float = field(0.0, check=at_least(0))
    q: float = field(1.0, check=greater(0))


@dataclass(frozen=True)
class LossConfig(Section):
    """Photometric, occlusion and smoothness settings shared by all stages."""

    occlusion: Literal["range", "fb"] = "range"
    level_weights: tuple[float, ...] = field((1.0, 1.0, 1.0, 1.0, 0.0), check=each(at_least(0)))
    l1_weight: float = field(0.15, check=at_least(0))  # stages with photometric 'l1_ssim'
    ssim_weight: float = field(0.85, check=at_least(0))
    census_weight: float = field(1.0, check=greater(0))  # stages with photometric 'census'
    smooth_weight: float = field(0.0, check=at_least(0))  # edge-aware smoothness; 0 in the published configs
    smooth_order: Literal[1, 2] = 2
    hg: HomographyLossConfig = field(factory=HomographyLossConfig)
    aug: AugLossConfig = field(factory=AugLossConfig)

    def validate(self) -> None:
        if not self.level_weights or not any(self.level_weights):
            raise ConfigError("level_weights", f"must have a weight > 0, got {list(self.level_weights)}")
        if self.l1_weight + self.ssim_weight <= 0:
            raise ConfigError("ssim_weight", "l1_weight + ssim_weight must be > 0")


# The augment knobs are the augment module's own dataclasses (one definition: trainer/augment/configs.py,
# which validates itself); these checks give their keys our path-naming errors.
_APPEARANCE_CHECKS = {
    "brightness": at_least(0), "contrast": at_least(0), "saturation": at_least(0), "hue": within(0, 0.5),
    "gamma": all_of(each(greater(0)), ordered_pairs), "noise": at_least(0),
}
_POSITIVE_RANGES = all_of(each(greater(0)), ordered_pairs)
_SPATIAL_CHECKS = {
    "zoom": _POSITIVE_RANGES, "squeeze": _POSITIVE_RANGES, "rotate": ordered_pairs,
    "translate": each(within(0, 2)), "noise": at_least(0),
}
_KEY_OBJECT_CHECKS = {
    "cache_size": at_least(1), "per_sample": at_least(1), "motion_scale": _POSITIVE_RANGES,
    "min_area_frac": within(0, 1),
}


@dataclass(frozen=True)
class AugmentConfig(Section):
    """The ARFlow passes and the semantic augmentation (see trainer/augment/configs.py for the knobs)."""

    appearance: AppearanceConfig = field(factory=AppearanceConfig, sub_checks=_APPEARANCE_CHECKS)
    spatial: SpatialConfig = field(factory=SpatialConfig, sub_checks=_SPATIAL_CHECKS)
    occlusion_crop: tuple[int, int] = field((192, 640), check=_sizes)  # occlusion-pass crop (h, w)
    key_objects: KeyObjectConfig = field(factory=KeyObjectConfig, sub_checks=_KEY_OBJECT_CHECKS)


@dataclass(frozen=True)
class OptimConfig(Section):
    """Adam with a OneCycle learning rate (torch.optim.lr_scheduler.OneCycleLR semantics)."""

    lr: float = field(4e-4, check=greater(0))  # the maximum of the cycle
    betas: tuple[float, float] = field((0.9, 0.999), check=each(within(0, 1, hi_open=True)))
    weight_decay: float = field(1e-6, check=at_least(0))  # on conv weights only (as the reference)
    bias_decay: float = field(0.0, check=at_least(0))  # on biases (the reference's bias_decay: 0)
    # Adam's epsilon: the reference's 1e-7. Most first gradients are below 1e-6, so eps decides the step size.
    eps: float = field(1e-7, check=greater(0))
    clip: float = field(10.0, check=at_least(0))  # gradient-norm clip, 0 = off
    schedule: Literal["onecycle", "constant"] = "onecycle"
    warmup: float = field(0.05, check=within(0, 1, hi_open=True))  # fraction of iterations (pct_start)
    anneal: Literal["linear", "cos"] = "linear"
    div_factor: float = field(25.0, check=greater(0))  # initial lr = lr / div_factor
    final_div_factor: float = field(1e4, check=greater(0))  # final lr = initial lr / final_div_factor
    batch_size: int = field(8, check=at_least(1))  # global: split over the processes of a distributed run
    iterations: int = field(200_000, check=at_least(1))


@dataclass(frozen=True)
class Stage(Section):
    """What is on from `start` (a fraction of optim.iterations) until the next stage starts."""

    start: float = field(0.0, check=within(0, 1, hi_open=True))
    photometric: Literal["l1_ssim", "census"] = "l1_ssim"
    w_ar: float = field(0.0, check=at_least(0))  # weight of the spatial + occlusion pass losses
    spatial: bool = False  # spatial (affine) pass
    occlusion: bool = False  # occlusion (crop) pass
    key_aug: bool = False  # paste cached key objects in the occlusion pass (+aug)
    w_hg: float = field(0.0, check=at_least(0))  # homography smoothness (+hg)
    # occlusion estimate of this stage's photometric loss, pseudo-label mask and +hg; null = loss.occlusion
    # (the reference switches from the range map to forward-backward consistency at stage 1)
    occ_method: Literal["range", "fb"] | None = None

    def validate(self) -> None:
        if self.key_aug and not self.occlusion:
            raise ConfigError("key_aug", "needs occlusion true (objects are pasted in the occlusion pass)")


@dataclass(frozen=True)
class LoggingConfig(Section):
    """How often (in iterations) the engine logs, draws, checkpoints and evaluates; 0 = never."""

    every: int = field(100, check=at_least(1))  # scalars (losses, lr, timing)
    tensorboard: bool = True
    image_every: int = field(5000, check=at_least(0))
    checkpoint_every: int = field(10_000, check=at_least(0))
    eval_every: int = field(10_000, check=at_least(0))  # on data.val_dataset
    # without a terminal (nohup, SLURM) a progress line goes to stderr every this many seconds (0 = each step)
    progress_seconds: float = field(30.0, check=at_least(0))


@dataclass(frozen=True)
class TrainConfig(Section):
    """Everything a training run needs besides its output folder."""

    config_version: int = CONFIG_VERSION
    name: str = ""  # the preset (or file stem) it was loaded from
    description: str = ""
    data: DataConfig = field(factory=DataConfig)
    model: ModelConfig = field(factory=ModelConfig)
    loss: LossConfig = field(factory=LossConfig)
    augment: AugmentConfig = field(factory=AugmentConfig)
    optim: OptimConfig = field(factory=OptimConfig)
    stages: tuple[Stage, ...] = field(factory=lambda: (Stage(),))
    logging: LoggingConfig = field(factory=LoggingConfig)
    seed: int = field(0, check=at_least(0))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False

    def validate(self) -> None:
        if self.config_version != CONFIG_VERSION:
            raise ConfigError("config_version", f"this config has version {self.config_version}; "
                                                f"this unsamflow reads version {CONFIG_VERSION}")
        self._validate_stages()
        crop, occ, resize = self.data.crop, self.augment.occlusion_crop, self.data.resize
        if resize is not None and (crop[0] > resize[0] or crop[1] > resize[1]):
            raise ConfigError("data.crop", f"must fit in data.resize {list(resize)}, got {list(crop)}")
        if occ[0] > crop[0] or occ[1] > crop[1]:
            raise ConfigError("augment.occlusion_crop",
                              f"must fit in data.crop {list(crop)}, got {list(occ)}")

    def _validate_stages(self) -> None:
        if not self.stages:
            raise ConfigError("stages", "must list at least one stage")
        if self.stages[0].start != 0:
            start = self.stages[0].start
            raise ConfigError("stages.0.start", f"the first stage must start at 0, got {start:g}")
        # Starts are fractions of the run, so they scale with optim.iterations; in a run so short that two
        # starts round to the same iteration the earlier stage is skipped (optim.iterations=2 still runs).
        for i in range(1, len(self.stages)):
            if self.stages[i].start <= self.stages[i - 1].start:
                raise ConfigError(
                    f"stages.{i}.start",
                    f"must be after stages.{i - 1}.start ({self.stages[i - 1].start:g}), "
                    f"got {self.stages[i].start:g}",
                )
        for i, s in enumerate(self.stages):
            if s.key_aug and self.data.max_key_objects == 0:
                raise ConfigError(f"stages.{i}.key_aug", "needs data.max_key_objects > 0")


def stage_starts(cfg: TrainConfig) -> list[int]:
    """The first iteration (0-based) of each stage (equal starts: the earlier stage is skipped)."""
    return [round(s.start * cfg.optim.iterations) for s in cfg.stages]


def stage_at(cfg: TrainConfig, iteration: int) -> tuple[int, Stage]:
    """(index, stage) in force at 0-based `iteration`: the last stage that has started.

    Iterations past the end stay in the last stage (a resumed run asked for more steps).
    """
    if iteration < 0:
        raise ConfigError("", f"iteration must be >= 0, got {iteration}")
    index = 0
    for i, start in enumerate(stage_starts(cfg)):
        if iteration >= start:
            index = i
    return index, cfg.stages[index]
