"""Key objects from tracks (`pipeline track`): which key objects persist into frame 2, and how far each
one moved there (its own displacement, for augment.key_objects.track_motion)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.store import MaskStore
from unsamflow.pipeline.store.tracks import read_key_tracks, read_mask_tracks


def key_tracks(store1: MaskStore, row1: int, store2: MaskStore, row2: int, ids: np.ndarray,
               require: bool) -> tuple[np.ndarray, np.ndarray]:
    """(key-object mask indices, their track ids) of frame 1; with `require`, only those whose track has
    a mask in frame 2. StoreError naming the store when it has no tracks."""
    k1 = read_key_tracks(store1, row1)
    t2 = read_mask_tracks(store2, row2)
    for store, got in ((store1, k1), (store2, t2)):
        if got is None:
            raise StoreError(f"{store.path}: augment.key_objects.require_track / track_motion need object "
                             "tracks; run `unsamflow-pipeline track` on these stores")
    if require:
        keep = np.isin(k1, t2)
        return ids[keep], k1[keep]
    return ids, k1


def track_motion(keys: np.ndarray, store2: MaskStore, row2: int, tracks: np.ndarray, k: int,
                 transform: Callable[[np.ndarray], np.ndarray]) -> dict[str, torch.Tensor]:
    """key_motion (K, 2) float32: per key object (its transformed frame-1 mask in `keys`), the shift (x, y)
    of its centroid to its track's mask in frame 2 under the same co-transform; key_motion_valid (K,):
    where that mask exists and is not cut away by the crop."""
    motion = np.zeros((k, 2), np.float32)
    valid = np.zeros(k, bool)
    t2 = read_mask_tracks(store2, row2)
    where = {int(t): i for i, t in enumerate(t2)}
    found = [(j, where[int(t)]) for j, t in enumerate(tracks) if int(t) in where]
    if found:
        masks2 = transform(store2.read_masks(row2, [i for _, i in found]))
        for (j, _), m2 in zip(found, masks2, strict=True):
            if m2.any() and keys[j].any():
                y1, x1 = np.nonzero(keys[j])
                y2, x2 = np.nonzero(m2)
                motion[j] = (x2.mean() - x1.mean(), y2.mean() - y1.mean())
                valid[j] = True
    return {"key_motion": torch.from_numpy(motion), "key_motion_valid": torch.from_numpy(valid)}
