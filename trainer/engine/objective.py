"""The stage-aware objective of one training step (method.md sections 3-4).

Up to three forward passes: the main pass on the clean pair (photometric loss, the pseudo-label and its
non-occlusion mask), then, on the appearance-augmented pair, the spatial pass (affine transform of the
batch) and the occlusion pass (key objects pasted, then a crop), both supervised by the detached
pseudo-label. The main pass sees the clean frames as in the public reference code (ARFlow's and
UnSAMFlow's trainers feed `img1`/`img2` to it and the jittered `img*_ph` only to the second passes), so
the second passes teach invariance to the colour changes; method.md's wording puts the jitter on the
main pass, which would make the pseudo-label come from the very frames the student then sees.
A stage switches terms on and off; nothing here is a subclass per dataset or per stage.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from unsamflow.trainer.engine.timing import PhaseTimer
from unsamflow.trainer.losses import (
    homography_loss_fwbw,
    image_edge_weights,
    photometric_loss,
    smooth_1st,
    smooth_2nd,
)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """The step's total loss, its weighted terms (for logging) and what the pictures and the key-object
    cache need afterwards."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    pseudo: torch.Tensor  # finest forward flow of the main pass, detached
    occ1: torch.Tensor
    pasted: tuple[torch.Tensor, torch.Tensor] | None = None  # occlusion-pass frames after pasting
    extras: dict[str, Any] = field(default_factory=dict)


class Objective:
    """Losses of one step under a stage's switches.

    Args:
        cfg: the TrainConfig (loss, augment, amp and channels_last are read).
        generator: the augmentation generator, on the training device.
        cache: the key-object cache (None when no stage pastes objects).
        timer: phases "forward", "loss_*" and "augmentation" are timed here.
    """

    def __init__(self, cfg: Any, generator: torch.Generator, cache: Any, timer: PhaseTimer):
        self.cfg = cfg
        self.generator = generator
        self.cache = cache
        self.timer = timer
        self.device = generator.device
        amp = getattr(cfg, "amp", "off")
        self.amp_dtype = AMP_DTYPES.get(amp)
        self.channels_last = bool(getattr(cfg, "channels_last", False))

    # --- the network -----------------------------------------------------------------------------

    def forward(
        self, model: torch.nn.Module, img1: torch.Tensor, img2: torch.Tensor, seg1: torch.Tensor,
        seg2: torch.Tensor, with_bw: bool = True,
    ) -> dict[str, list[torch.Tensor]]:
        """The network under autocast (if amp is on); flows come back as float32 for the losses."""
        if self.channels_last:
            img1 = img1.contiguous(memory_format=torch.channels_last)
            img2 = img2.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else nullcontext())
        with self.timer.phase("forward"), autocast:
            out = model(img1, img2, seg1, seg2, with_bw=with_bw)
        return {k: [f.float() for f in v] for k, v in out.items()}

    # --- the terms -------------------------------------------------------------------------------

    def appearance(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from unsamflow.trainer.augment import appearance

        with self.timer.phase("augmentation"), torch.no_grad():
            return appearance(img1, img2, self.cfg.augment.appearance, self.generator)

    def photometric(
        self, img1: torch.Tensor, img2: torch.Tensor, out: dict[str, list[torch.Tensor]], stage: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 0: L1 + SSIM; from stage 1 (photometric: census): the census distance. Occlusion by
        the stage's occ_method, else loss.occlusion."""
        lc = self.cfg.loss
        if stage.photometric == "census":
            weights = {"w_l1": 0.0, "w_ssim": 0.0, "w_ternary": lc.census_weight}
        else:
            weights = {"w_l1": lc.l1_weight, "w_ssim": lc.ssim_weight, "w_ternary": 0.0}
        with self.timer.phase("loss_photometric"):
            occlusion = getattr(stage, "occ_method", None) or lc.occlusion
            return photometric_loss(img1, img2, out["flows_fw"], out["flows_bw"], occlusion=occlusion,
                                    level_weights=lc.level_weights, **weights)

    def smoothness(self, img1: torch.Tensor, img2: torch.Tensor, out: dict[str, list[torch.Tensor]]):
        """Edge-aware smoothness of the finest flows (weight 0 in the published configs)."""
        lc = self.cfg.loss
        smooth, step = (smooth_2nd, 2) if lc.smooth_order == 2 else (smooth_1st, 1)
        with self.timer.phase("loss_smoothness"):
            fw = smooth(out["flows_fw"][0], image_edge_weights(img1, step=step))
            bw = smooth(out["flows_bw"][0], image_edge_weights(img2, step=step))
            return lc.smooth_weight * (fw + bw) / 2

    def homography(self, out, seg1, seg2, occ1, occ2) -> torch.Tensor:
        hg = self.cfg.loss.hg
        with self.timer.phase("loss_homography"):
            return homography_loss_fwbw(
                out["flows_fw"][0], out["flows_bw"][0], seg1, seg2, occ1, occ2,
                ransac_thresh=hg.ransac_thresh, num_regions=hg.num_regions, min_visible=hg.min_visible,
                min_visible_frac=hg.min_visible_frac, min_inlier_rate=hg.min_inlier_rate,
                num_hypotheses=hg.num_hypotheses, generator=self.generator,
            )

    def _masked(self, pred: torch.Tensor, pair: Any, name: str) -> torch.Tensor:
        from unsamflow.trainer.losses.augmentation import masked_flow_loss

        with self.timer.phase(f"loss_{name}"):
            aug = self.cfg.loss.aug
            return masked_flow_loss(pred, pair.flow, pair.noc, eps=aug.eps, q=aug.q)

    def spatial_pass(self, model, img1a, img2a, pseudo, noc, seg1, seg2) -> torch.Tensor:
        """Affine-transformed pair, forward only, supervised by the transformed pseudo-label."""
        from unsamflow.trainer.augment import spatial_pass

        with self.timer.phase("augmentation"), torch.no_grad():
            pair = spatial_pass(img1a, img2a, pseudo, noc, seg1, seg2, self.cfg.augment.spatial,
                                self.generator)
        pred = self.forward(model, pair.img1, pair.img2, pair.seg1, pair.seg2, with_bw=False)["flows_fw"][0]
        return self._masked(pred, pair, "spatial")

    def occlusion_pass(self, model, img1a, img2a, pseudo, noc, seg1, seg2, key_aug: bool):
        """Key objects pasted (when on and the cache is full), then a crop; forward only.
        Returns (loss, pasted frames or None)."""
        from unsamflow.trainer.augment import AugmentedPair, occlusion_crop

        pasted = None
        with self.timer.phase("augmentation"), torch.no_grad():
            pair = AugmentedPair.build(img1a, img2a, pseudo, noc, seg1, seg2)
            if key_aug and self.cache is not None and self.cache.full:
                ko = self.cfg.augment.key_objects
                pair = self.cache.paste(pair, self.generator, per_sample=ko.per_sample, scale=ko.motion_scale)
                pasted = (pair.img1, pair.img2)
            pair = occlusion_crop(pair, tuple(self.cfg.augment.occlusion_crop), self.generator)
        pred = self.forward(model, pair.img1, pair.img2, pair.seg1, pair.seg2, with_bw=False)["flows_fw"][0]
        return self._masked(pred, pair, "occlusion"), pasted

    # --- one step --------------------------------------------------------------------------------

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], stage: Any) -> StepResult:
        """All passes of one step for `stage`; the caller does backward and the optimiser."""
        img1, img2, seg1, seg2 = batch["img1"], batch["img2"], batch["full_seg1"], batch["full_seg2"]
        img1a, img2a = self.appearance(img1, img2)  # for the second passes and the key-object cache
        out = self.forward(model, img1, img2, seg1, seg2)
        photo, occ1, occ2 = self.photometric(img1, img2, out, stage)
        terms = {"photometric": photo}
        if self.cfg.loss.smooth_weight > 0:
            terms["smoothness"] = self.smoothness(img1, img2, out)
        pseudo, noc = out["flows_fw"][0].detach(), 1.0 - occ1
        pasted = None
        if stage.w_ar > 0 and stage.spatial:
            terms["spatial"] = stage.w_ar * self.spatial_pass(model, img1a, img2a, pseudo, noc, seg1, seg2)
        if stage.w_ar > 0 and stage.occlusion:
            occ, pasted = self.occlusion_pass(model, img1a, img2a, pseudo, noc, seg1, seg2, stage.key_aug)
            terms["occlusion"] = stage.w_ar * occ
        if stage.w_hg > 0:
            terms["homography"] = stage.w_hg * self.homography(out, seg1, seg2, occ1, occ2)
        loss = torch.stack(list(terms.values())).sum()
        return StepResult(loss, terms, pseudo, occ1, pasted, {"img1a": img1a, "img2a": img2a})

    def push_key_objects(self, batch: dict[str, Any], result: StepResult) -> None:
        """After the optimiser step (as the reference does): each sample offers one key object."""
        if self.cache is None:
            return
        with self.timer.phase("augmentation"), torch.no_grad():
            self.cache.push(result.extras["img1a"], batch["key_masks"], batch["key_count"], result.pseudo,
                            self.generator, min_area_frac=self.cfg.augment.key_objects.min_area_frac,
                            key_motion=batch.get("key_motion"),
                            key_motion_valid=batch.get("key_motion_valid"))
