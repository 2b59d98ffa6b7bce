"""Semantic (+aug) augmentation: a cache of key objects pasted into the occlusion pass as movers.

Storage: each object is kept in a fixed-size slot (default 200 x 300, the largest key-object box of
the reference thresholds) centred on its bounding box: premultiplied RGB (frame * mask) and the mask,
its slot's top-left position in the frame it came from, and its motion (mean detached flow in the
mask). Fixed slots keep the cache one tensor, so a whole batch is pasted by a few tensor ops (no loop
over samples) and the state saves as plain tensors. Objects larger than a slot lose what falls outside
it (a straight cut); frames of another size than the batch's are fine: an object is pasted at its
original position, clipped to the frame.

Pasting: frame 1 gets the object at its place (an exact copy), frame 2 the object shifted by its
motion, bilinear for the sub-pixel part (a per-sample 2x2 blend of the slot, then an integer
placement: exact for integer motions). Inside the frame-1 object the pseudo-label becomes the motion
and noc 1; full_seg of each frame gets a new label, one above that frame's largest.

Bookkeeping stays on the device: `count` is a tensor and samples without a usable object write to a
spare slot, so push/paste never wait for the device; only `.full`/`len()` read the count back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.augment.types import AugmentedPair, coin, uniform

SLOT_SIZE = (200, 300)


@dataclass
class PasteParams:
    """One paste draw, (R, B) per field for R rounds: cache slot, motion scale, reversal, mirror."""

    index: torch.Tensor
    scale: torch.Tensor
    reverse: torch.Tensor
    mirror: torch.Tensor


class KeyObjectCache:
    """A ring buffer of `capacity` key objects (see the module docstring for the storage choice)."""

    def __init__(self, capacity: int = 100, slot_size: tuple[int, int] = SLOT_SIZE) -> None:
        if capacity < 1 or min(slot_size) < 1:
            raise BadInputError(
                f"KeyObjectCache: capacity and slot size must be positive, got {capacity}, {slot_size}"
            )
        self.capacity = int(capacity)
        self.slot_size = (int(slot_size[0]), int(slot_size[1]))
        self.count = torch.zeros((), dtype=torch.long)  # objects ever pushed
        self.objects: torch.Tensor | None = None  # (capacity + 1, 4, Hs, Ws): RGB * mask, mask; last = spare
        self.origin: torch.Tensor | None = None  # (capacity + 1, 2) int64 slot top-left (x, y) in its frame
        self.motion: torch.Tensor | None = None  # (capacity + 1, 2) float32

    # -- state ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.count.clamp(max=self.capacity))

    @property
    def full(self) -> bool:
        """True once `capacity` objects were pushed (reads the count back from the device)."""
        return bool(self.count >= self.capacity)

    def state_dict(self) -> dict:
        """Tensors, ints and lists only: safe for torch.load(weights_only=True)."""
        state = {"capacity": self.capacity, "slot_size": list(self.slot_size), "count": self.count.clone()}
        if self.objects is not None:
            state.update(objects=self.objects.clone(), origin=self.origin.clone(), motion=self.motion.clone())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(); the capacity and slot size must match this cache's."""
        if state.get("capacity") != self.capacity or list(state.get("slot_size", ())) != list(self.slot_size):
            raise BadInputError(
                f"key-object cache state has capacity {state.get('capacity')} and slot size "
                f"{state.get('slot_size')}, this cache {self.capacity} and "
                f"{list(self.slot_size)}"
            )
        self.count = state["count"].clone()
        if "objects" in state:
            self.objects, self.origin, self.motion = (
                state[k].clone() for k in ("objects", "origin", "motion")
            )
        else:
            self.objects = self.origin = self.motion = None

    def to(self, device: torch.device | str) -> KeyObjectCache:
        self.count = self.count.to(device)
        if self.objects is not None:
            self.objects, self.origin, self.motion = (
                t.to(device) for t in (self.objects, self.origin, self.motion)
            )
        return self

    # -- push ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def push(
        self,
        img1: torch.Tensor,
        key_masks: torch.Tensor,
        key_count: torch.Tensor,
        flow: torch.Tensor,
        generator: torch.Generator,
        min_area_frac: float = 0.005,
        key_motion: torch.Tensor | None = None,
        key_motion_valid: torch.Tensor | None = None,
    ) -> None:
        """Each sample with a key object covering >= min_area_frac of the frame pushes one at random.

        img1 (B,3,H,W) the appearance-augmented frame 1; key_masks (B,K,H,W) bool; key_count (B,);
        flow (B,2,H,W) the detached main-pass forward flow. Once full, the oldest objects are replaced.
        key_motion (B,K,2) / key_motion_valid (B,K): each key object's own displacement from its track
        (augment.key_objects.track_motion); where valid it is the object's motion instead of the mean
        flow in its mask.
        """
        b, k, h, w = key_masks.shape
        if img1.shape != (b, 3, h, w) or flow.shape != (b, 2, h, w) or key_count.shape != (b,):
            raise BadInputError(
                f"KeyObjectCache.push: img1 {tuple(img1.shape)}, key_masks {tuple(key_masks.shape)}, "
                f"key_count {tuple(key_count.shape)} and flow {tuple(flow.shape)} do not agree"
            )
        if k == 0:
            return  # no key objects in this batch (frames without mask stores)
        dev = img1.device
        self._allocate(img1.dtype, dev)
        masks = key_masks.to(dev).bool()
        area = masks.flatten(2).sum(2)
        valid = (torch.arange(k, device=dev) < key_count.to(dev)[:, None]) & (
            area >= max(min_area_frac * h * w, 1)
        )
        score = torch.rand(b, k, generator=generator, device=generator.device).to(dev)
        pick = torch.where(valid, score, -1.0).argmax(1)
        has = valid.any(1)
        mask = masks[torch.arange(b, device=dev), pick]  # (B, H, W)
        mf = mask.to(flow.dtype).unsqueeze(1)
        motion = (flow.detach() * mf).sum((2, 3)) / mf.sum((2, 3)).clamp(min=1)
        if key_motion is not None:
            picked = (torch.arange(b, device=dev), pick)
            own = key_motion.to(dev)[picked].to(motion.dtype)
            motion = torch.where(key_motion_valid.to(dev)[picked][:, None], own, motion)
        corner = self._slot_corner(mask)
        obj = torch.cat((img1.detach() * mf.to(img1.dtype), mf.to(img1.dtype)), 1)
        slot = _window(obj, corner, self.slot_size)
        pos = (self.count.to(dev) + has.long().cumsum(0) - 1) % self.capacity
        pos = torch.where(has, pos, self.capacity)  # samples without an object write to the spare slot
        self.objects[pos] = slot.to(self.objects.dtype)
        self.origin[pos] = corner
        self.motion[pos] = motion.float()
        self.count = self.count.to(dev) + has.sum()

    def _allocate(self, dtype: torch.dtype, device: torch.device) -> None:
        if self.objects is None:
            hs, ws = self.slot_size
            self.objects = torch.zeros(self.capacity + 1, 4, hs, ws, dtype=dtype, device=device)
            self.origin = torch.zeros(self.capacity + 1, 2, dtype=torch.long, device=device)
            self.motion = torch.zeros(self.capacity + 1, 2, device=device)
        elif self.objects.device != device:
            self.to(device)

    def _slot_corner(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 2) top-left (x, y) of the slot centred on each mask's bounding box."""
        b, h, w = mask.shape
        rows, cols = mask.any(2).int(), mask.any(1).int()
        y0, y1 = rows.argmax(1), h - 1 - rows.flip(1).argmax(1)
        x0, x1 = cols.argmax(1), w - 1 - cols.flip(1).argmax(1)
        hs, ws = self.slot_size
        return torch.stack(((x0 + x1) // 2 - ws // 2, (y0 + y1) // 2 - hs // 2), 1)

    # -- paste --------------------------------------------------------------------------------------
    def draw_paste_params(
        self,
        generator: torch.Generator,
        batch: int,
        per_sample: int = 3,
        scale: tuple[float, float] = (0.8, 1.5),
        device: torch.device | str = "cpu",
    ) -> PasteParams:
        """Per round, `batch` distinct filled slots (at random) and each object's random change."""
        n = per_sample * batch
        score = torch.rand(per_sample, self.capacity, generator=generator, device=generator.device).to(device)
        filled = torch.arange(self.capacity, device=device) < self.count.to(device)
        order = (score - 2.0 * (~filled).float()).argsort(1, descending=True)
        index = order[:, torch.arange(batch, device=device) % self.capacity]
        return PasteParams(
            index=index,
            scale=uniform(generator, n, scale[0], scale[1], device).view(per_sample, batch),
            reverse=coin(generator, n, device).view(per_sample, batch),
            mirror=coin(generator, n, device).view(per_sample, batch),
        )

    @torch.no_grad()
    def apply_paste(self, pair: AugmentedPair, params: PasteParams) -> AugmentedPair:
        """Paste the drawn objects, one round after the other (later rounds on top)."""
        if self.objects is None:
            return pair
        dev, dt = pair.img1.device, pair.img1.dtype
        if self.objects.device != dev:  # e.g. restored from a checkpoint loaded on the CPU
            self.to(dev)
        h, w = pair.size
        img1, img2, noc = pair.img1.clone(), pair.img2.clone(), pair.noc.clone()  # blended in place
        flow, seg1, seg2 = pair.flow, pair.seg1, pair.seg2
        filled = torch.arange(self.capacity + 1, device=dev) < self.count.to(dev)
        for r in range(params.index.shape[0]):
            idx = params.index[r].to(dev)
            obj = self.objects[idx].to(dt) * filled[idx].to(dt).view(-1, 1, 1, 1)
            mirror = params.mirror[r].to(dev)
            obj = torch.where(mirror.view(-1, 1, 1, 1), obj.flip(-1), obj)
            sign = 1.0 - 2.0 * params.reverse[r].to(dev).float()
            motion = self.motion[idx] * (params.scale[r].to(dev) * sign)[:, None]
            motion = motion * torch.stack((1.0 - 2.0 * mirror.float(), torch.ones_like(sign)), 1)
            corner = self.origin[idx]
            o1 = place(obj, corner, (h, w))  # integer corner: a plain copy
            o2 = place(obj, corner.float() + motion, (h, w))
            img1.addcmul_(img1, o1[:, 3:], value=-1).add_(o1[:, :3])  # img (1 - m) + premultiplied object
            img2.addcmul_(img2, o2[:, 3:], value=-1).add_(o2[:, :3])
            in1, in2 = o1[:, 3:] > 0.5, o2[:, 3] > 0.5
            flow = torch.where(in1, motion.to(dt)[:, :, None, None], flow)
            noc.masked_fill_(in1, 1)
            seg1 = torch.where(in1[:, 0], seg1.flatten(1).amax(1)[:, None, None] + 1, seg1)
            seg2 = torch.where(in2, seg2.flatten(1).amax(1)[:, None, None] + 1, seg2)
        return AugmentedPair(img1, img2, flow, noc, seg1, seg2)

    def paste(
        self,
        pair: AugmentedPair,
        generator: torch.Generator,
        per_sample: int = 3,
        scale: tuple[float, float] = (0.8, 1.5),
    ) -> AugmentedPair:
        """Draw and apply: `per_sample` cached objects into each sample (meant for a full cache)."""
        params = self.draw_paste_params(generator, pair.img1.shape[0], per_sample, scale, pair.img1.device)
        return self.apply_paste(pair, params)


def _window(x: torch.Tensor, corner: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x (B,C,H,W) cut per sample at corner (B,2) (x, y) to size; outside the frame is 0."""
    b, c, h, w = x.shape
    hs, ws = size
    rows = corner[:, 1, None] + torch.arange(hs, device=x.device)
    cols = corner[:, 0, None] + torch.arange(ws, device=x.device)
    ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    idx = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    out = x.reshape(b, c, h * w).gather(2, idx.view(b, 1, -1).expand(b, c, -1)).view(b, c, hs, ws)
    return out * ok[:, None].to(x.dtype)


def place(obj: torch.Tensor, corner: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Slots obj (B,C,hs,ws) drawn into zero frames of `size` with their top-left at corner (B,2) (x, y).

    A float corner's sub-pixel part is a bilinear 2x2 blend of the slot (weights (1, 0) for integer
    values, so an integer placement copies exactly); the integer part is one gather from the
    zero-bordered slot. An integer (int64) corner skips the blend.
    """
    b, c, hs, ws = obj.shape
    h, w = size
    if corner.dtype.is_floating_point:
        base = corner.floor()
        f = (corner - base).to(obj.dtype)  # (B, 2) in [0, 1)
        p = F.pad(obj, (1, 1, 1, 1))  # slot pixel j at padded j + 1
        fx, fy = f[:, 0].view(b, 1, 1, 1), f[:, 1].view(b, 1, 1, 1)
        p = torch.lerp(p[..., :, 1:], p[..., :, :-1], fx)  # window pixel k = slot k - f: k in 0..ws
        p = torch.lerp(p[..., 1:, :], p[..., :-1, :], fy)  # (B, C, hs + 1, ws + 1): frame pixel base + k
        base = base.long()
    else:
        p, base = obj, corner
    hp, wp = p.shape[-2] + 2, p.shape[-1] + 2
    p = F.pad(p, (1, 1, 1, 1))  # zero border: clamped indices read 0
    rows = (torch.arange(h, device=obj.device) - base[:, 1, None] + 1).clamp(0, hp - 1)
    cols = (torch.arange(w, device=obj.device) - base[:, 0, None] + 1).clamp(0, wp - 1)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return p.reshape(b, c, hp * wp).gather(2, idx).view(b, c, h, w)
