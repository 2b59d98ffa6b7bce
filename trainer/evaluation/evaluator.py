"""Run a flow predictor over a flow dataset and accumulate the benchmark's metrics (trainer.metrics).

One path for every predictor (network, zero, DIS): each pair's frames (and full_seg, when a seg source
is given) go to the predictor, its flow is scored against the ground truth, and optionally refined by
per-object homographies (trainer.refine) and scored again. Everything that can be checked before the
first pair is (empty dataset, +mf without masks, stores that miss a frame), so a bad run fails in a
second and writes nothing.

For distributed evaluation pass `indices` (e.g. a DistributedSampler's) and all-reduce the
`accumulators`' sums; every output file is named by its pair, so ranks never write the same file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.evaluation.predictors import FlowPredictor
from unsamflow.trainer.metrics import FlowMetrics

FLOW_SUFFIXES = {"flo": ".flo", "kitti-png": ".png"}


@dataclass
class PairResult:
    frame1: str
    frame2: str
    metrics: dict[str, float]
    refined: dict[str, float] | None = None
    seconds: float = 0.0  # the predictor's time on this pair


@dataclass
class EvalResult:
    """Metrics of one predictor on one dataset; `refined` holds the after-refine metrics when asked."""

    dataset: str
    predictor: str
    aggregate: str
    metrics: dict[str, float]
    refined: dict[str, float] | None
    pairs: list[PairResult]
    seconds: float
    accumulators: dict[str, FlowMetrics] = field(default_factory=dict, repr=False)

    @property
    def seconds_per_pair(self) -> float:
        """The predictor's own time per pair (reading, scoring and refining left out)."""
        return sum(p.seconds for p in self.pairs) / max(len(self.pairs), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "predictor": self.predictor,
            "aggregate": self.aggregate,
            "num_pairs": len(self.pairs),
            "metrics": self.metrics,
            "refined": self.refined,
            "seconds_per_pair": self.seconds_per_pair,
            "seconds": self.seconds,
            "pairs": [vars(p) for p in self.pairs],
        }


def evaluate(
    predictor: FlowPredictor | Callable[..., np.ndarray],
    dataset: Sequence[dict[str, Any]],
    name: str,
    *,
    segs: Callable[[str, np.ndarray], np.ndarray] | None = None,
    refine: bool | dict[str, Any] = False,
    indices: Iterable[int] | None = None,
    write_outputs: str | Path | None = None,
    flow_format: str = "flo",
    on_pair: Callable[[int, int, PairResult], None] | None = None,
    on_flow: Callable[[dict[str, Any], np.ndarray, np.ndarray | None], None] | None = None,
) -> EvalResult:
    """Evaluate `predictor` on `dataset` (pairs with GT flow; `name` picks the benchmark's aggregation).

    segs: full_seg source called as segs(frame_id, image) (StoreSegs / SegmenterSegs); needed by
    predictors with `needs_segs` and by `refine`. refine: True (the default rule, trainer.refine.DEFAULT_RULE)
    or refine_flow keyword options.
    indices: the pairs to run (a subset or a sampler); default all. An empty share is allowed (a rank
    with no pairs contributes zero sums); an empty dataset is an error.
    write_outputs: folder for each pair's flow (`flow/`, `refined/`) and picture (`pictures/`).
    on_pair(n, total, result) after each pair (progress); on_flow(sample, flow, refined) to see the flows.
    """
    from unsamflow.trainer.refine import DEFAULT_RULE, refine_flow

    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    where = getattr(getattr(dataset, "manifest", None), "root", None)
    if len(dataset) == 0:  # an empty share of a non-empty dataset (a rank with no pairs) is fine
        raise BadInputError(f"dataset {name!r}{f' at {where}' if where else ''} has no pairs with "
                            "ground-truth flow to evaluate")  # fmt: skip
    pred_name = getattr(predictor, "name", getattr(predictor, "__name__", "predictor"))
    if getattr(predictor, "needs_segs", False) and segs is None:
        raise BadInputError(f"{pred_name}: the model has mask features (+mf) and needs full_seg: "
                            "give the mask stores of this dataset (--masks STORES)")  # fmt: skip
    if refine and segs is None:
        raise BadInputError("refine needs full_seg: give the mask stores of this dataset (--masks STORES)")
    if flow_format not in FLOW_SUFFIXES:
        raise BadInputError(f"flow format must be one of {sorted(FLOW_SUFFIXES)}, got {flow_format!r}")
    pairs = getattr(dataset, "pairs", None)
    if segs is not None and pairs is not None and hasattr(segs, "check_covers"):
        segs.check_covers(f for i in order for f in (pairs[i].frame1, pairs[i].frame2))
    refine_options = refine if isinstance(refine, dict) else {"rule": DEFAULT_RULE}

    before, after = FlowMetrics.for_dataset(name), FlowMetrics.for_dataset(name) if refine else None
    results: list[PairResult] = []
    start = time.perf_counter()
    for n, i in enumerate(order):
        sample = dataset[i]
        if "flow" not in sample:
            raise BadInputError(f"pair {sample['frame1']!r} -> {sample['frame2']!r} of {name!r} has no "
                                "ground-truth flow (open the dataset with gt_only=True)")  # fmt: skip
        seg1 = seg2 = None
        if segs is not None:
            seg1, seg2 = segs(sample["frame1"], sample["img1"]), segs(sample["frame2"], sample["img2"])
        t0 = time.perf_counter()
        flow = np.asarray(predictor(sample["img1"], sample["img2"], seg1, seg2), np.float32)
        seconds = time.perf_counter() - t0
        if flow.shape != sample["flow"].shape:
            raise BadInputError(f"{pred_name} returned flow of shape {flow.shape} for pair "
                                f"{sample['frame1']!r}, expected {sample['flow'].shape}")  # fmt: skip
        gt, valid, occ = sample["flow"], sample["valid"], sample.get("occ")
        result = PairResult(sample["frame1"], sample["frame2"], before.update(flow, gt, valid, occ)[0],
                            seconds=seconds)  # fmt: skip
        refined = None
        if after is not None:
            refined, _ = refine_flow(flow, seg1, **refine_options)
            result.refined = after.update(refined, gt, valid, occ)[0]
        if write_outputs is not None:
            _write_pair(Path(write_outputs), sample, flow, refined, flow_format)
        results.append(result)
        if on_flow is not None:
            on_flow(sample, flow, refined)
        if on_pair is not None:
            on_pair(n, len(order), result)
    accumulators = {"model": before} | ({"refined": after} if after is not None else {})
    return EvalResult(
        dataset=name, predictor=pred_name, aggregate=before.aggregate, metrics=before.compute(),
        refined=after.compute() if after is not None else None, pairs=results,
        seconds=time.perf_counter() - start, accumulators=accumulators,
    )


def output_stem(frame_id: str) -> str:
    """A pair's output name: frame 1's id without its extension (ids are root-relative paths)."""
    return str(Path(frame_id).with_suffix(""))


def _write_pair(out: Path, sample: dict, flow: np.ndarray, refined: np.ndarray | None, fmt: str) -> None:
    from unsamflow.pipeline.flow import flow_panel, write_flow
    from unsamflow.pipeline.images import write_png

    stem, suffix = output_stem(sample["frame1"]), FLOW_SUFFIXES[fmt]
    write_flow(out / "flow" / f"{stem}{suffix}", flow)
    panel = flow_panel(sample["img1"], sample["img2"], flow, sample["flow"], sample["valid"], annotate=True)
    if refined is not None:
        write_flow(out / "refined" / f"{stem}{suffix}", refined)
        panel = np.concatenate([panel, flow_panel(sample["img1"], sample["img2"], refined, sample["flow"],
                                                  sample["valid"], annotate=True)], axis=0)  # fmt: skip
    write_png(out / "pictures" / f"{stem}.png", panel)
