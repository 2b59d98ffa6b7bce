"""Flow datasets: frame pairs with their ground truth, read from a Manifest.

The layout knowledge (which files pair with which) lives in pipeline.layouts; a FlowDataset only
reads what a Manifest's pairs point to. Each sample is a dict:

  frame1, frame2   frame ids (POSIX paths relative to the root; the ids the mask stores use)
  img1, img2       H x W x 3 uint8 RGB
  flow, valid      H x W x 2 float32, H x W bool             where the pair has GT flow
                   (Sintel's invalid/ pixels and .flo unknown values are not valid)
  occ              H x W bool (True = occluded)               Sintel, synthetic; KITTI when both
                                                              flow_occ and flow_noc are present
  flow_bw, occ_bw, inst1, inst2                               synthetic scenes only

`open_dataset("sintel-clean-training", root)` builds one by a ptlflow-style name (see DATASETS).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.flow.io import read_flo, read_flow, read_label_png, read_mask_png
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.manifest import Manifest, Pair

# ptlflow-like name -> (layout, scan options)
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "sintel-clean-training": ("sintel", {"split": "training", "passes": ["clean"]}),
    "sintel-final-training": ("sintel", {"split": "training", "passes": ["final"]}),
    "sintel-clean-test": ("sintel", {"split": "test", "passes": ["clean"]}),
    "sintel-final-test": ("sintel", {"split": "test", "passes": ["final"]}),
    "kitti-2015-training": ("kitti2015", {"split": "training"}),
    "kitti-2015-testing": ("kitti2015", {"split": "testing"}),
    "kitti-2015-multiview": ("kitti2015", {"split": "training", "multiview": True}),
    "kitti-2012-training": ("kitti2012", {"split": "training"}),
    "kitti-2012-testing": ("kitti2012", {"split": "testing"}),
    "kitti-2012-multiview": ("kitti2012", {"split": "training", "multiview": True}),
    "middlebury-other": ("middlebury", {}),
    "flyingchairs": ("flyingchairs", {"split": "all"}),
    "flyingchairs-train": ("flyingchairs", {"split": "train"}),
    "flyingchairs-val": ("flyingchairs", {"split": "val"}),
    "flyingthings3d-clean-train": ("flyingthings3d", {"split": "train", "passes": ["clean"]}),
    "flyingthings3d-final-train": ("flyingthings3d", {"split": "train", "passes": ["final"]}),
    "flyingthings3d-clean-test": ("flyingthings3d", {"split": "test", "passes": ["clean"]}),
    "flyingthings3d-final-test": ("flyingthings3d", {"split": "test", "passes": ["final"]}),
    "hd1k": ("hd1k", {}),
    "kitti-raw": ("kitti-raw", {}),
    "sintel-raw": ("sintel-raw", {}),
    "pairs": ("pairs", {}),
    "folder": ("folder", {}),
    "synthetic": ("synthetic", {}),
}

# ptlflow's short names, accepted by every command (train's mixes, evaluate, pipeline manifest/run)
SHORT_NAMES: dict[str, str] = {
    "sintel-clean": "sintel-clean-training",
    "sintel-final": "sintel-final-training",
    "kitti-2015": "kitti-2015-training",
    "kitti-2012": "kitti-2012-training",
    "middlebury": "middlebury-other",
}


def resolve_name(name: str) -> tuple[str, str, dict[str, Any]]:
    """(full dataset name, layout, scan options) for a dataset name, a short name or a layout name."""
    from unsamflow.pipeline.layouts import LAYOUTS

    full = SHORT_NAMES.get(name, name)
    if full in DATASETS:
        return full, *DATASETS[full]
    if name in LAYOUTS:
        return name, name, {}
    known = ", ".join(dict.fromkeys([*DATASETS, *SHORT_NAMES, *LAYOUTS]))
    raise BadInputError(f"unknown dataset {name!r}; known: {known}")


class FlowDataset:
    """Indexable pairs of a Manifest (map-style; works as a torch Dataset).

    gt_only: keep only pairs that have ground-truth flow (for evaluation).
    """

    def __init__(self, manifest: Manifest, gt_only: bool = False):
        self.manifest = manifest
        self.pairs: list[Pair] = [p for p in manifest.pairs if p.flow or not gt_only]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def index_of(self, frame1: str) -> int:
        """Position of the pair starting at frame id `frame1`."""
        for i, p in enumerate(self.pairs):
            if p.frame1 == frame1:
                return i
        raise BadInputError(f"no pair starts at frame {frame1!r} in this {self.manifest.layout} dataset")

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"pair {index} out of range (dataset has {len(self)} pairs)")
        pair = self.pairs[index]
        m = self.manifest
        img1, _ = read_rgb(m.path(pair.frame1), pair.frame1)
        img2, _ = read_rgb(m.path(pair.frame2), pair.frame2)
        if img1.shape != img2.shape:
            raise BadFrameError(pair.frame2, f"size {img2.shape[0]}x{img2.shape[1]} (HxW) differs from "
                                f"{pair.frame1} ({img1.shape[0]}x{img1.shape[1]})")  # fmt: skip
        shape = img1.shape[:2]
        sample: dict[str, Any] = {"frame1": pair.frame1, "frame2": pair.frame2, "img1": img1, "img2": img2}
        if pair.flow:
            flow, valid = self._flow(pair.flow, shape)
            if pair.invalid:
                valid &= ~read_mask_png(m.path(pair.invalid), shape)
            if pair.valid:
                valid &= read_mask_png(m.path(pair.valid), shape)
            sample["flow"], sample["valid"] = flow, valid
            occ = self._kitti_occlusion(pair, valid) if pair.occ_kind == "flow_occ" else None
            if occ is not None:
                sample["occ"] = occ
        if pair.occlusion:
            sample["occ"] = read_mask_png(m.path(pair.occlusion), shape)
        if m.layout == "synthetic":
            sample.update(self._synthetic_extras(pair, shape))
        return sample

    def _flow(self, rel: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        path = self.manifest.path(rel)
        flow, valid = read_flow(path)
        if flow.shape[:2] != shape:
            raise BadInputError(f"{path}: flow is {flow.shape[0]}x{flow.shape[1]} (HxW), "
                                f"frames are {shape[0]}x{shape[1]}")  # fmt: skip
        return flow, valid

    def _kitti_occlusion(self, pair: Pair, valid_occ: np.ndarray) -> np.ndarray | None:
        """KITTI marks occluded pixels only implicitly: valid in flow_occ but not in flow_noc."""
        assert pair.flow is not None
        noc = pair.flow.replace("flow_occ/", "flow_noc/")
        if noc == pair.flow or not self.manifest.path(noc).is_file():
            return None
        _, valid_noc = self._flow(noc, valid_occ.shape)
        return valid_occ & ~valid_noc

    def _synthetic_extras(self, pair: Pair, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        from unsamflow.pipeline.synthetic.dataset import (
            gt_paths,  # only synthetic sets need the generator's names
        )

        out: dict[str, np.ndarray] = {}
        for key, rel in gt_paths(pair.frame1, pair.frame2).items():
            path = self.manifest.path(rel)
            if not path.is_file():
                continue
            if key == "flow_bw":
                out[key] = read_flo(path)[0]
            elif key == "occ_bw":
                out[key] = read_mask_png(path, shape)
            else:
                out[key] = read_label_png(path, shape)
        return out


def open_dataset(name: str, root: str | Path, gt_only: bool = False, **options: Any) -> FlowDataset:
    """A FlowDataset by ptlflow-like name (DATASETS, SHORT_NAMES or a layout name); options override the
    name's scan options. `pairs` takes the list file as its root (`open_dataset("pairs", "list.csv")`)."""
    from unsamflow.pipeline.layouts import scan

    _, layout, defaults = resolve_name(name)
    return FlowDataset(scan(layout, root, **{**defaults, **options}), gt_only=gt_only)
