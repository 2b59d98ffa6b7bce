"""Training data: frame pairs of any flow dataset (or mix) joined with their mask stores by frame id.

    ds = open_pairs("kitti-2015-multiview*2+sintel-clean", roots=..., masks=...,
                    transform=CoTransformConfig(crop=(256, 832), hflip=True, swap=True))
    loader = build_loader(ds, batch_size=8, seed=cfg.seed)
    for epoch in ...: set_epoch(loader, epoch); for batch in loader: ...

A batch (default collate):
  img1, img2            float32 (B,3,H,W) in [0,1] RGB, co-transformed (resize, crop, flips, swap), unjittered
  full_seg1, full_seg2  int64 (B,H,W) store labels (0 = background); zeros without stores
  key_masks, key_count  bool (B,K,H,W) frame 1's key objects, zero-padded to K; int64 (B,) how many are real
  flow, valid, occ      (B,2,H,W) float32, (B,H,W) bool, (B,H,W) bool: only with GT (occ if all pairs have)
  frame1, frame2        list[str] frame ids (after a swap, frame1 is the file that was frame 2)

Modules: mixes (names, `*N`, roots/masks lookup), checks (file vs store), transforms (co-transforms),
pairs (the dataset), loader (sampler, seeding, DataLoader).
"""

from unsamflow.trainer.data.checks import CHECKS, check_files, image_size
from unsamflow.trainer.data.loader import KeySampler, build_loader, set_epoch, worker_init
from unsamflow.trainer.data.mixes import ALIASES, DataPhase, MixPart, lookup, parse_mix, parse_phases
from unsamflow.trainer.data.pairs import PairDataset, SampleKey, open_pairs
from unsamflow.trainer.data.transforms import CoTransformConfig, Plan, apply, apply_flow, draw_plan

__all__ = ["ALIASES", "CHECKS", "CoTransformConfig", "DataPhase", "KeySampler", "MixPart", "PairDataset",
           "Plan", "SampleKey", "apply", "apply_flow", "build_loader", "check_files", "draw_plan",
           "image_size", "lookup", "open_pairs", "parse_mix", "parse_phases", "set_epoch", "worker_init"]
