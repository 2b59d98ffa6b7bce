"""Re-derivation in place: new full_seg / key objects from a store's masks, without re-segmenting."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
from unsamflow.pipeline.atomic import temp_path
from unsamflow.pipeline.canonical import canonical_json
from unsamflow.pipeline.derive import DeriveConfig, derive
from unsamflow.pipeline.store.integrity import commit_store
from unsamflow.pipeline.store.reader import MaskStore
from unsamflow.pipeline.store.schema import _DERIVED_FIELDS
from unsamflow.pipeline.store.writer import Appender, add_derived, check_derived


def rewrite_derived(path: str | Path, cfg: DeriveConfig) -> Path:
    """Recompute full_seg and key objects of every frame from the stored masks with `cfg`
    and replace the store atomically (with a new checksum sidecar); masks are copied as they are."""
    path = Path(path)
    src = MaskStore(path)
    tmp = temp_path(path)
    try:
        with h5py.File(tmp, "w") as out:
            fin = src._file()
            for k, v in fin.attrs.items():
                out.attrs[k] = v
            for group in ("frames", "masks", "bad"):
                fin.copy(fin[group], out, name=group)
            out.attrs["derive_config"] = canonical_json(cfg.to_dict())
            out.attrs["rederived"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            app = Appender(out, _DERIVED_FIELDS)
            for r in range(len(src)):
                fm = src.read(r)
                full_seg, key_idx = derive(fm.masks, fm.bbox.astype(np.float64), cfg)
                checked = check_derived(fm.frame_id, fm.image_shape, len(fm.area), full_seg, key_idx)
                add_derived(app, *checked)
            app.flush()
        src.close()
        commit_store(tmp, path)
    except BaseException:
        src.close()
        tmp.unlink(missing_ok=True)
        raise
    return path

