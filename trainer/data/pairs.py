"""Frame pairs joined with their mask stores by frame id: the training (and evaluation) dataset.

    pairs = open_pairs("sintel-clean+sintel-final*2", roots={"sintel": "/data/Sintel"},
                       masks={"sintel": "/masks/sintel"}, transform=CoTransformConfig((384, 832), hflip=True,
                       swap=True))

Everything that can be checked is checked when the dataset is built, so a run fails before training
starts, naming the frame: a frame with no entry in the stores, a store made from another file or
image size (see checks.py), a pair whose frames differ in size, a frame smaller than the crop. Pairs
the index records as bad (a bad frame, or `pipeline index --manifest` found their sizes differ) are
left out up front and listed in `skipped`.

A sample (see the batch contract in trainer/data/__init__.py) is a dict of tensors. Its randomness
comes only from a generator seeded by (seed, epoch, rank, index): the loader's sampler hands the
dataset `SampleKey`s, so a run replays exactly whatever the worker count or start method, and a
plain int index means (index, epoch 0, seed 0, rank 0). Stores are opened lazily, in the process
that reads (each DataLoader worker, forked or spawned).
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from unsamflow.pipeline.errors import BadFrameError, BadInputError, StoreError
from unsamflow.pipeline.flow.datasets import FlowDataset, open_dataset
from unsamflow.pipeline.images import decode_rgb
from unsamflow.pipeline.manifest import Pair
from unsamflow.pipeline.store import Index, MaskStore
from unsamflow.trainer.data.checks import StoredFrame, check_files, image_size
from unsamflow.trainer.data.mixes import MixPart, lookup, parse_mix
from unsamflow.trainer.data.transforms import (
    CoTransformConfig,
    Plan,
    apply,
    apply_flow,
    draw_plan,
    resize_array,
    resize_flow_array,
)

MAX_LISTED = 20  # problems listed in one error; the rest are counted


class SampleKey(NamedTuple):
    """What a sample's randomness is drawn from; the loader's sampler yields these."""

    index: int
    epoch: int = 0
    seed: int = 0
    rank: int = 0


@dataclass
class Component:
    """One dataset of a mix: its pairs (positions in `dataset.pairs` kept) and its stores (or None)."""

    part: MixPart
    dataset: FlowDataset
    index: Index | None
    kept: list[int]
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset over the kept pairs of every component, each repeated as the mix says."""

    def __init__(self, components: list[Component], transform: CoTransformConfig = CoTransformConfig(),
                 max_key_objects: int = 8, gt: bool = False, occ: bool = False, *,
                 require_track: bool = False, track_motion: bool = False):
        if max_key_objects < 0:
            raise BadInputError(f"max_key_objects must be >= 0, got {max_key_objects}")
        self.require_track = require_track  # key objects only where their track reaches frame 2
        self.track_motion = track_motion  # + key_motion / key_motion_valid: each one's track displacement
        self.components = components
        self.transform = transform
        self.max_key_objects = max_key_objects
        self.gt = gt
        self.occ = occ
        items = [np.stack([np.full(len(c.kept), i), np.arange(len(c.kept))], 1)
                 for i, c in enumerate(components) for _ in range(c.part.repeat)]
        self.items = np.concatenate(items) if items else np.zeros((0, 2), np.int64)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def skipped(self) -> dict[tuple[str, str], str]:
        """Pairs left out up front, (frame1, frame2) -> reason (as recorded in the stores' index)."""
        return {k: v for c in self.components for k, v in c.skipped.items()}

    def pair(self, index: int) -> Pair:
        c, j = self.items[index]
        comp = self.components[c]
        return comp.dataset.pairs[comp.kept[j]]

    def skipped_summary(self) -> str | None:
        """One line: how many pairs are left out and why (counted by kind), with one example; None when
        none is. Recorded bad pairs are left out up front, so a run says so instead of dropping them."""
        if not self.skipped:
            return None
        kinds: dict[str, int] = {}
        for reason in self.skipped.values():
            kind = "a bad frame" if reason.startswith("frame ") and " is bad: " in reason else \
                reason.split(" (")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        total = len(self.skipped) + sum(len(c.kept) for c in self.components)
        why = ", ".join(f"{n} for {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
        (a, b), reason = next(iter(self.skipped.items()))
        return (f"data: {len(self.skipped)} of {total} pairs left out as recorded bad in the mask stores' "
                f"index ({why}); e.g. {a!r} -> {b!r}: {reason}")

    def summary(self) -> str:
        parts = ", ".join(f"{c.part.written}: {len(c.kept)} pairs x{c.part.repeat}" for c in self.components)
        skipped = f"; {len(self.skipped)} bad pairs left out" if self.skipped else ""
        return f"{len(self)} samples ({parts}){skipped}"

    # -- one sample ---------------------------------------------------------------------------
    def __getitem__(self, key: int | SampleKey | tuple) -> dict[str, Any]:
        key = SampleKey(*key) if isinstance(key, tuple) else SampleKey(int(key))
        if not 0 <= key.index < len(self):
            raise IndexError(f"sample {key.index} out of range (dataset has {len(self)})")
        rng = np.random.default_rng([key.seed, key.epoch, key.rank, key.index])
        c, j = self.items[key.index]
        comp = self.components[c]
        pos = comp.kept[j]
        pair = comp.dataset.pairs[pos]
        if self.gt:
            raw = comp.dataset[pos]
        else:
            raw = {"img1": _read(comp.dataset, pair.frame1), "img2": _read(comp.dataset, pair.frame2)}
            if raw["img1"].shape != raw["img2"].shape:
                (h1, w1), (h2, w2) = raw["img1"].shape[:2], raw["img2"].shape[:2]
                raise BadFrameError(pair.frame2, f"size {w2}x{h2} differs from {pair.frame1} ({w1}x{h1})")
        size = self.transform.size_of(raw["img1"].shape[:2])
        plan = draw_plan(self.transform, size, rng, pair.frame1)
        f1, f2 = (pair.frame2, pair.frame1) if plan.swap else (pair.frame1, pair.frame2)
        img1, img2 = (raw["img2"], raw["img1"]) if plan.swap else (raw["img1"], raw["img2"])
        out: dict[str, Any] = {"img1": _image_tensor(img1, plan, size),
                               "img2": _image_tensor(img2, plan, size)}
        out.update(self._masks(comp.index, f1, f2, raw["img1"].shape[:2], plan, rng, size))
        if self.gt:
            out.update(_gt(raw, plan, self.occ, size))
        out["frame1"], out["frame2"] = f1, f2
        return out

    def _masks(self, index: Index | None, f1: str, f2: str, shape: tuple[int, int], plan: Plan,
               rng: np.random.Generator, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        k, h, w = self.max_key_objects, plan.height, plan.width
        if index is None:
            zeros = torch.zeros((h, w), dtype=torch.int64)
            return {"full_seg1": zeros, "full_seg2": zeros.clone(),
                    "key_masks": torch.zeros((k, h, w), dtype=torch.bool), "key_count": torch.tensor(0)}
        store1, row1 = index.store_for(f1)
        store2, row2 = index.store_for(f2)
        seg1 = _seg(store1, row1, f1, shape, plan, size)
        seg2 = _seg(store2, row2, f2, shape, plan, size)
        keys = np.zeros((k, h, w), bool)
        ids = store1.read_key_objects(row1)
        n = 0
        tracks = None
        if self.require_track or self.track_motion:
            from unsamflow.trainer.data.tracks import key_tracks

            ids, tracks = key_tracks(store1, row1, store2, row2, ids, self.require_track)
        if k and ids.size:
            masks = apply(resize_array(store1.read_masks(row1, ids), size), plan)
            kept = np.flatnonzero(masks.reshape(len(masks), -1).any(1))  # none cut away entirely by the crop
            if len(kept) > k:
                kept = kept[np.sort(rng.choice(len(kept), size=k, replace=False))]
            masks = masks[kept]
            n = len(masks)
            keys[:n] = masks
        out = {"full_seg1": seg1, "full_seg2": seg2, "key_masks": torch.from_numpy(keys),
               "key_count": torch.tensor(n)}
        if self.track_motion:
            from unsamflow.trainer.data.tracks import track_motion

            out.update(track_motion(keys[:n], store2, row2, tracks[kept] if n else tracks[:0], k,
                                    lambda m: apply(resize_array(m, size), plan)))
        return out


def _read(dataset: FlowDataset, frame_id: str) -> np.ndarray:
    """Pixels only (no content hash: the files were checked when the dataset was built)."""
    path = dataset.manifest.path(frame_id)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadFrameError(frame_id, f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_rgb(data, frame_id)


def _image_tensor(img: np.ndarray, plan: Plan, size: tuple[int, int] | None = None) -> torch.Tensor:
    if size is not None and tuple(img.shape[:2]) != tuple(size):  # bilinear, as evaluation resizes
        from unsamflow.trainer.evaluation.padding import resize_images

        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        img = resize_images(x[None], size)[0].permute(1, 2, 0).numpy()
        return torch.from_numpy(np.ascontiguousarray(apply(img, plan, channels_last=True).transpose(2, 0, 1)))
    x = np.ascontiguousarray(apply(img, plan, channels_last=True).transpose(2, 0, 1))
    return torch.from_numpy(x).float().div_(255.0)


def _seg(store: MaskStore, row: int, frame_id: str, shape: tuple[int, int], plan: Plan,
         size: tuple[int, int] | None = None) -> torch.Tensor:
    seg = store.read_full_seg(row)
    if seg.shape != tuple(shape):
        raise StoreError(f"frame {frame_id!r}: {store.path.name} has it at {seg.shape[1]}x{seg.shape[0]}, "
                         f"the file is {shape[1]}x{shape[0]}")
    if size is not None:
        seg = resize_array(seg, size)
    return torch.from_numpy(apply(seg, plan).astype(np.int64))


def _gt(raw: dict, plan: Plan, occ: bool, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    if size is not None and tuple(raw["flow"].shape[:2]) != tuple(size):
        raw = {"flow": resize_flow_array(raw["flow"], size), "valid": resize_array(raw["valid"], size),
               **({"occ": resize_array(raw["occ"], size)} if occ else {})}
    h, w = plan.height, plan.width
    if plan.swap:  # the forward flow of the swapped pair is unknown: nothing of it is valid
        out = {"flow": torch.zeros((2, h, w)), "valid": torch.zeros((h, w), dtype=torch.bool)}
        if occ:
            out["occ"] = torch.zeros((h, w), dtype=torch.bool)
        return out
    flow = apply_flow(raw["flow"], plan).transpose(2, 0, 1)
    out = {"flow": torch.from_numpy(np.ascontiguousarray(flow)),
           "valid": torch.from_numpy(np.ascontiguousarray(apply(raw["valid"], plan)))}
    if occ:
        out["occ"] = torch.from_numpy(np.ascontiguousarray(apply(raw["occ"], plan)))
    return out


# -- building and checking -------------------------------------------------------------------------
def _has_occ(dataset: FlowDataset, pair: Pair) -> bool:
    if pair.occlusion:
        return True
    if pair.occ_kind == "flow_occ" and pair.flow:  # KITTI: occluded = valid in flow_occ, not in flow_noc
        noc = pair.flow.replace("flow_occ/", "flow_noc/")
        return noc != pair.flow and dataset.manifest.path(noc).is_file()
    return False


def _check_component(comp: Component, transform: CoTransformConfig, check: str, check_sample: int | None,
                     seed: int, skip_bad: bool) -> list[tuple[type, str]]:
    """Decide which pairs are kept and list every problem (error class, line naming the frame)."""
    ds, index, where = comp.dataset, comp.index, comp.part.written
    problems: list[tuple[type, str]] = []
    frames: dict[str, StoredFrame] = {}
    for pos, p in enumerate(ds.pairs):
        if index is not None:
            recorded = index.bad_pairs.get((p.frame1, p.frame2))
            bad = [f for f in (p.frame1, p.frame2) if f in index.bad_frames]
            if recorded is None and bad:
                recorded = f"frame {bad[0]!r} is bad: {index.bad_frames[bad[0]]}"
            if recorded is not None:
                if not skip_bad:
                    problems.append((StoreError, f"{where}: pair {p.frame1!r} -> {p.frame2!r}: {recorded}"))
                comp.skipped[p.frame1, p.frame2] = recorded
                continue
            missing = [f for f in (p.frame1, p.frame2) if f not in index]
            if missing:
                problems += [(StoreError, f"{where}: frame {f!r} has no entry in the mask stores of "
                                          f"{index.store_dir}") for f in missing]
                continue
            for f in (p.frame1, p.frame2):
                if f not in frames:
                    store, row = index.store_for(f)
                    frames[f] = StoredFrame(f, ds.manifest.path(f), store.image_shape(row), store.sha256(row))
        comp.kept.append(pos)
    if index is not None:
        found = check_files(frames.values(), check, check_sample, seed)
        problems += [(StoreError, f"{where}: {line}") for line in found]
        index.close()  # each reader (DataLoader worker) opens its own handles
        shapes = {f: s.shape for f, s in frames.items()}
    elif check != "none":
        ids = sorted({f for pos in comp.kept for f in (ds.pairs[pos].frame1, ds.pairs[pos].frame2)})
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(lambda f: _size_or_problem(ds, f), ids))
        problems += [(BadInputError, f"{where}: {s}") for s in sizes if isinstance(s, str)]
        shapes = {f: s for f, s in zip(ids, sizes, strict=True) if not isinstance(s, str)}
    else:
        return problems  # sizes unknown until read: checked per sample
    crop = transform.crop
    for pos in comp.kept:
        p = ds.pairs[pos]
        s1, s2 = shapes.get(p.frame1), shapes.get(p.frame2)
        if s1 is None or s2 is None:
            continue
        if s1 != s2:
            problems.append((BadInputError, f"{where}: frame {p.frame2!r} is {s2[1]}x{s2[0]} but its pair's "
                             f"frame {p.frame1!r} is {s1[1]}x{s1[0]} (to leave such pairs out, record them: "
                             f"`pipeline index --stores DIR --manifest FILE`)"))
        elif crop and (crop[0] > transform.size_of(s1)[0] or crop[1] > transform.size_of(s1)[1]):
            what = f"resized to {transform.resize[1]}x{transform.resize[0]}" if transform.resize else \
                f"{s1[1]}x{s1[0]}"
            problems.append((BadInputError, f"{where}: frame {p.frame1!r} is {what}, smaller than "
                             f"the crop {crop[1]}x{crop[0]}"))
    return problems


def _size_or_problem(ds: FlowDataset, frame_id: str) -> tuple[int, int] | str:
    try:
        return image_size(ds.manifest.path(frame_id), frame_id)
    except (BadFrameError, BadInputError) as exc:
        return str(exc)


def open_pairs(spec: str, roots: Mapping[str, str | Path], masks: Mapping[str, str | Path] | None = None,
               transform: CoTransformConfig = CoTransformConfig(), max_key_objects: int = 8,
               gt: bool | None = None, check: str = "hash", check_sample: int | None = None,
               skip_bad: bool = True, seed: int = 0, key_options: dict | None = None) -> PairDataset:
    """Build and check the dataset of a mix (see mixes.py for `spec`, `roots`, `masks`).

    masks=None: no stores (full_seg zeros, key_count 0), e.g. evaluation without masks.
    gt: return flow/valid (and occ where every pair has it); None = when every pair has GT flow.
    check / check_sample: how each frame's file is compared with its store (checks.py).
    skip_bad: leave out pairs the index records as bad (False: fail on them too).
    key_options: PairDataset's require_track / track_motion (key objects from tracks, trainer/data/tracks).
    Raises StoreError / BadInputError listing every problem found, each naming its frame.
    """
    components = []
    problems: list[tuple[type, str]] = []
    for part in parse_mix(spec):
        root = lookup(roots, part, "roots")
        if root is None:
            raise BadInputError(f"roots: dataset {part.written!r} needs a root directory, got None")
        store_dir = lookup(masks, part, "masks")
        ds = open_dataset(part.name, root)
        if len(ds) == 0:
            raise BadInputError(f"dataset {part.written!r} at {root} has no frame pairs")
        comp = Component(part, ds, Index.load(store_dir) if store_dir is not None else None, [])
        problems += _check_component(comp, transform, check, check_sample, seed, skip_bad)
        components.append(comp)
    if problems:
        cls = StoreError if any(c is StoreError for c, _ in problems) else BadInputError
        lines = [line for _, line in problems]
        more = f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
        listed = "\n  ".join(lines[:MAX_LISTED])
        raise cls(f"{len(lines)} problem(s) with the training data:\n  {listed}{more}")
    kept = [(c, c.dataset.pairs[i]) for c in components for i in c.kept]
    if not kept:
        n_bad = sum(len(c.skipped) for c in components)
        raise BadInputError(f"dataset mix {spec!r}: no usable pairs (all {n_bad} are recorded as bad)")
    without = next(((c, p) for c, p in kept if not p.flow), None)
    if gt is None:
        gt = without is None
    elif gt and without is not None:
        raise BadInputError(f"{without[0].part.written}: pair {without[1].frame1!r} -> {without[1].frame2!r} "
                            "has no ground-truth flow (gt=True needs it for every pair)")
    occ = gt and all(_has_occ(c.dataset, p) for c, p in kept)
    return PairDataset(components, transform, max_key_objects, gt=gt, occ=occ, **(key_options or {}))
