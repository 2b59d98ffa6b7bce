"""Homography loss on realistic flows: our batched RANSAC vs the reference's cv2.findHomography loop.

The golden data of the reference (tests/test_parity.py) checks flows that follow exact homographies,
where every RANSAC finds the same model. Here the flows are what a network sees early on: OpenCV DIS
flows (forward and backward) of real frame pairs, forward-backward occlusion, full segmentations of the
weight-free `graph` segmenter. The reference loop (`homography_loss_reference`: one cv2.findHomography
per region, as the reference) is deterministic for one point order, so its own spread is measured by
shuffling the correspondences (seeds 0..N-1); ours by the generator seed. Ours is run with the
default 128 hypotheses per region and with 512. Writes benchmarks/results/homography_parity.{json,md}.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from unsamflow.pipeline.derive import full_segmentation
from unsamflow.pipeline.segmenters.graph import GraphSegmenter
from unsamflow.trainer.losses.homography import homography_loss, homography_loss_reference
from unsamflow.trainer.losses.occlusion import occlusion_fb

from benchmarks.common import write_results

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNSAMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
PAIRS = [
    (REPO / "tests/data/kitti2015/training/image_2/000000_10.png",
     REPO / "tests/data/kitti2015/training/image_2/000000_11.png"),
    (REPO / "tests/data/sintel/training/clean/alley_1/frame_0002.png",
     REPO / "tests/data/sintel/training/clean/alley_1/frame_0003.png"),
    (SHARED / "sintel/training/final/market_5/frame_0002.png",
     SHARED / "sintel/training/final/market_5/frame_0003.png"),
    (SHARED / "sintel/training/final/cave_2/frame_0002.png",
     SHARED / "sintel/training/final/cave_2/frame_0003.png"),
]


def batch(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flow (B,2,H,W) float32, labels (B,H,W) int64, occ (B,H,W) bool) of the pairs found, at `size`."""
    h, w = size
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    seg = GraphSegmenter()
    flows, labels, occs = [], [], []
    for a, b in PAIRS:
        if not (a.is_file() and b.is_file()):
            continue
        im1, im2 = (cv2.resize(cv2.imread(str(p))[..., ::-1], (w, h), interpolation=cv2.INTER_AREA)
                    for p in (a, b))  # fmt: skip
        g1, g2 = (cv2.cvtColor(np.ascontiguousarray(i), cv2.COLOR_RGB2GRAY) for i in (im1, im2))
        f12, f21 = dis.calc(g1, g2, None), dis.calc(g2, g1, None)
        t12, t21 = (torch.from_numpy(f.transpose(2, 0, 1)[None].copy()) for f in (f12, f21))
        occs.append(occlusion_fb(t12, t21)[0, 0].numpy().astype(bool))
        masks = np.stack([m["segmentation"] for m in seg(np.ascontiguousarray(im1))])
        labels.append(full_segmentation(masks).astype(np.int64))
        flows.append(f12.transpose(2, 0, 1))
    return np.stack(flows).astype(np.float32), np.stack(labels), np.stack(occs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows, cases = [], []
    load = os.getloadavg()[0]
    for size in ((256, 832), (128, 448)):
        flow, seg, occ = batch(size)
        for thr in (0.5, 3.0):
            ref = np.array([homography_loss_reference(flow, seg, occ, ransac_thresh=thr, shuffle_seed=s)
                            for s in range(args.seeds)])  # fmt: skip
            row = {"size": f"{size[0]}x{size[1]}", "pairs": int(flow.shape[0]), "ransac_thresh": thr,
                   "opencv_mean": float(ref.mean()), "opencv_std": float(ref.std())}  # fmt: skip
            case = {**row, "opencv": ref.tolist()}
            for name, hyp in (("128", 128), ("512", 512)):
                ours = np.array([
                    float(homography_loss(torch.from_numpy(flow), torch.from_numpy(seg),
                                          torch.from_numpy(occ), ransac_thresh=thr, num_hypotheses=hyp,
                                          generator=torch.Generator().manual_seed(s)))
                    for s in range(args.seeds)
                ])
                case[f"ours_{name}"] = ours.tolist()
                row[f"ours_{name}_mean"] = float(ours.mean())
                row[f"ours_{name}_std"] = float(ours.std())
                row[f"ratio_{name}"] = float(ours.mean() / ref.mean())
                # how many OpenCV spreads the means lie apart
                gap = abs(ours.mean() - ref.mean()) / max(ref.std(), 1e-12)
                row[f"gap_in_opencv_std_{name}"] = float(gap)
            rows.append(row)
            cases.append(case)
            print(row, flush=True)
    notes = (f"{args.seeds} shuffles of OpenCV's correspondences vs {args.seeds} generator seeds of ours; "
             "forward homography loss over the batch (DIS flows, forward-backward occlusion, graph full "
             f"segmentations of real pairs). Load average at start {load:.2f}. ours_128 = as trained "
             "(128 hypotheses per region, the default); ours_512 = 512 hypotheses.")
    write_results("homography_parity", rows, notes, summary={"load_avg": load, "cases": cases})


if __name__ == "__main__":
    main()
