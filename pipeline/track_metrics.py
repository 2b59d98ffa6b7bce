"""Accuracy of tracks against ground-truth instance ids (synthetic scenes have them exactly).

Per frame, masks are matched one-to-one to the ground-truth instances by IoU (Hungarian, IoU >= alpha,
0.5 by default): a matched pair is a true positive c = (g, t) of instance g and track t. Over a sequence,
with n(g, t) the number of frames in which g is matched to t, |g| the frames in which instance g is
visible (matched or not) and |t| the frames in which track t has a mask (matched or not):

- identity switches (CLEAR-MOT IDSW): times an instance is matched to another track than at its
  previous match; `switches_old_track_present` counts those where the previous track still has a mask
  in that frame (the linker kept it going, but another mask now matches the instance better: with
  nested multi-scale masks, the segmenter's choice rather than the linker's);
- purity: sum_t max_g n(g, t) / sum n: the share of matches whose track belongs to its main instance;
- completeness: sum_g max_t n(g, t) / sum_g |g|: the share of each instance's visible frames covered
  by its main track;
- association accuracy of the HOTA family (Luiten et al., IJCV 2021), at the one threshold alpha:

      AssA = 1/|TP| * sum_{c in TP} |TPA(c)| / (|TPA(c)| + |FNA(c)| + |FPA(c)|)

  where for c = (g, t): TPA(c) = the matches of g to t (n(g, t) of them), FNA(c) = the frames of g not
  matched to t (|g| - n(g, t)), FPA(c) = the frames of t not matched to g (|t| - n(g, t)). So
  AssA = sum_{g,t} n(g,t)^2 / (|g| + |t| - n(g,t)) / sum n. 1 is perfect; a new id every frame gives
  about 1/|g|.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def frame_matches(masks: np.ndarray, tracks: np.ndarray, instances: np.ndarray, alpha: float = 0.5,
                  ignore: Iterable[int] = ()) -> tuple[list[tuple[int, int]], set[int], list[int]]:
    """One frame: (matched (instance, track) pairs, visible instances, tracks of every mask).

    masks (N, H, W) bool with track ids `tracks` (N,); instances (H, W) ground-truth ids; instances in
    `ignore` (e.g. the background 0) are neither matched nor counted."""
    ignore = set(ignore)
    ids = [int(i) for i in np.unique(instances) if int(i) not in ignore]
    if not ids or not len(masks):
        return [], set(ids), [int(t) for t in tracks]
    lut = np.full(int(instances.max()) + 1, -1, np.int64)
    lut[ids] = np.arange(len(ids))
    col = lut[instances]
    gt_area = np.bincount(col[col >= 0], minlength=len(ids)).astype(np.float64)
    iou = np.zeros((len(ids), len(masks)))
    for j, m in enumerate(masks):
        c = col[m]
        inter = np.bincount(c[c >= 0], minlength=len(ids)).astype(np.float64)
        iou[:, j] = inter / (gt_area + m.sum() - inter)
    rows, cols = linear_sum_assignment(-iou)
    pairs = [(ids[r], int(tracks[c])) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= alpha]
    return pairs, set(ids), [int(t) for t in tracks]


@dataclass
class TrackScores:
    id_switches: int
    switches_old_track_present: int
    purity: float
    completeness: float
    assa: float
    matches: int  # true positives over the sequence
    instances: int
    tracks: int

    def to_dict(self) -> dict:
        return asdict(self)


def score_sequence(frames: Iterable[tuple[list[tuple[int, int]], set[int], list[int]]]) -> TrackScores:
    """Scores of one sequence from its frames' `frame_matches`."""
    n: Counter = Counter()
    visible: Counter = Counter()
    present: Counter = Counter()
    last: dict[int, int] = {}
    switches = alive = 0
    for pairs, gts, tracks in frames:
        visible.update(gts)
        here = set(tracks)
        present.update(here)
        for g, t in pairs:
            n[(g, t)] += 1
            if g in last and last[g] != t:
                switches += 1
                alive += last[g] in here
            last[g] = t
    total = sum(n.values())
    if not total:
        return TrackScores(switches, alive, 0.0, 0.0, 0.0, 0, len(visible), len(present))
    by_track: dict[int, int] = {}
    by_gt: dict[int, int] = {}
    for (g, t), k in n.items():
        by_track[t] = max(by_track.get(t, 0), k)
        by_gt[g] = max(by_gt.get(g, 0), k)
    assa = sum(k * k / (visible[g] + present[t] - k) for (g, t), k in n.items()) / total
    return TrackScores(
        id_switches=switches,
        switches_old_track_present=alive,
        purity=sum(by_track.values()) / total,
        completeness=sum(by_gt.values()) / sum(visible.values()),
        assa=assa,
        matches=total,
        instances=len(visible),
        tracks=len(present),
    )
