"""The `segment` stage, worker side: one shard through a segmenter into one HDF5 store.

The unit of work is a shard; pipeline/dispatch.py (the client side) plans and submits them. A task
reads its frames, segments them with the worker's cached segmenter, derives full_seg and key objects,
and writes the store under a temporary name that is renamed only when the shard is complete: a killed
worker leaves nothing visible, Dask reruns the task elsewhere, and a later run skips every complete
shard. One frame that fails (memory budget, segmenter error) is recorded bad; its shard goes on.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError, StoreError
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segmenters.base import Segmenter, SegmenterSpec

PROGRESS_TOPIC = "unsamflow-progress"

_CACHE: dict[str, Segmenter] = {}


def worker_segmenter(spec: SegmenterSpec) -> Segmenter:
    """The segmenter of this worker process, built on first use and then reused.

    Only one is kept: a worker asked for another configuration drops the old model first, so two
    SAM models never share one GPU.
    """
    key = spec.key()
    seg = _CACHE.get(key)
    if seg is None:
        from unsamflow.pipeline.segmenters import build_segmenter

        _CACHE.clear()
        seg = _CACHE[key] = build_segmenter(spec)
        threads = os.environ.get("UNSAMFLOW_TORCH_THREADS")
        if threads and "torch" in sys.modules:  # only segmenters that use torch pay for importing it
            sys.modules["torch"].set_num_threads(int(threads))
    return seg


def segmenter_info(seg: Segmenter, spec: SegmenterSpec) -> dict:
    """What a store records about its producer; `spec` is what a re-run is compared against."""
    return {
        "name": seg.name,
        "version": seg.version,
        "config": seg.config(),
        "spec": {"name": spec.name, "options": spec.options},
    }


def records_to_arrays(records: list[dict], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) bool masks and (N, 4) XYWH boxes from segmenter records (only for frames known to fit;
    the segment stage itself uses pipeline.masks.CropMasks)."""
    from unsamflow.pipeline.masks import CropMasks

    if not records:
        return np.zeros((0, *shape), bool), np.zeros((0, 4), np.float64)
    masks = CropMasks.from_records(records, shape).to_stack()
    bboxes = np.asarray([r["bbox"] for r in records], np.float64).reshape(-1, 4)
    return masks, bboxes


# Share of a worker's memory (per thread) one frame may use; the rest is the segmenter's model, the
# frame read ahead, the previous frame being written and Dask itself.
FRAME_MEMORY_SHARE = 0.5


def default_frame_budget() -> int:
    """Bytes one frame may use: half of this worker's memory limit per thread (or of the machine's)."""
    import psutil

    limit, threads = None, 1
    try:
        from distributed import get_worker

        worker = get_worker()
        limit = worker.memory_manager.memory_limit
        threads = max(1, worker.state.nthreads)
    except (ValueError, AttributeError):  # not in a Dask worker (or an older one)
        pass
    if not limit:
        limit = psutil.virtual_memory().total
    return int(limit * FRAME_MEMORY_SHARE / threads)


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or a framework's own (torch.OutOfMemoryError is a RuntimeError)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def segment_frame(seg: Segmenter, rgb: np.ndarray, frame_id: str, budget: int | None, spec: SegmenterSpec,
                  check: bool):
    """(records without their masks, CropMasks) of one frame, or BadFrameError when it cannot fit.

    A segmenter may say what a frame will cost it (`peak_bytes(shape)`, e.g. SAM's full-resolution
    mask logits): a frame over the budget is then refused before the call that would kill the worker.
    """
    from unsamflow.pipeline.masks import CropMasks, fmt_bytes
    from unsamflow.pipeline.segmenters.base import check_records

    shape = rgb.shape[:2]
    peak = getattr(seg, "peak_bytes", None)
    if budget is not None and callable(peak) and peak(shape) > budget:
        raise BadFrameError(
            frame_id, f"out of memory budget: segmenter {spec.name!r} needs about {fmt_bytes(peak(shape))} "
            f"for a {shape[0]}x{shape[1]} (HxW) frame, over the per-frame budget of {fmt_bytes(budget)} "
            "(--frame-memory); raise it or lower the segmenter's batch size")
    call = getattr(seg, "segment_compact", seg)  # run-length masks where the segmenter offers them
    try:
        records = call(rgb)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise BadFrameError(frame_id, f"out of memory in segmenter {spec.name!r} for a "
                                f"{shape[0]}x{shape[1]} (HxW) frame: {type(exc).__name__}: {exc}") from None
        raise
    if check:  # a plug-in's records must not reach the store malformed
        check_records(records, shape, spec.name)
    try:
        masks = CropMasks.from_records(records, shape, budget, frame_id)
    except MemoryError:
        raise BadFrameError(frame_id, f"out of memory converting {len(records)} masks of a "
                            f"{shape[0]}x{shape[1]} (HxW) frame") from None
    meta = [{k: v for k, v in r.items() if k != "segmentation"} for r in records]
    return meta, masks


def _progress_sink():
    """A thread-safe callable publishing progress events to the client (a no-op outside Dask)."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # called directly, not as a Dask task: nobody is listening
        return lambda event: None
    return lambda event: worker.log_event(PROGRESS_TOPIC, event)


def remove_stale_temps(store_path: Path) -> None:
    """Temp files of this store left by a killed writer (the final name is never partial)."""
    from unsamflow.pipeline.atomic import stale_temps

    for tmp in stale_temps(store_path):
        tmp.unlink(missing_ok=True)


def _read(shard: Manifest, frame) -> tuple:
    from unsamflow.pipeline.images import read_rgb

    try:
        return (frame, *read_rgb(shard.path(frame.id), frame.id), None)
    except BadFrameError as exc:
        return frame, None, None, exc.reason
    except BadInputError as exc:  # e.g. an id that escapes the root
        return frame, None, None, str(exc)


def read_ahead(shard: Manifest):
    """(frame, rgb, sha256, bad reason) per frame, decoding the next frame while this one is segmented.

    Decoding and hashing release the GIL, so on a GPU worker (or a spare core) reading costs no time.
    """
    frames = shard.frames
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        nxt = pool.submit(_read, shard, frames[0]) if frames else None
        for i in range(len(frames)):
            cur = nxt.result()
            nxt = pool.submit(_read, shard, frames[i + 1]) if i + 1 < len(frames) else None
            yield cur


def segment_shard(
    shard_file: str,
    store_file: str,
    spec: SegmenterSpec,
    derive_config: dict,
    frame_memory: int | None = None,
) -> dict:
    """Dask task: segment one shard into one store. Returns the shard's statistics.

    Failures stay with their frame: a frame that cannot be read, cannot fit in `frame_memory` bytes
    (default: default_frame_budget()) or makes the segmenter run out of memory is recorded bad with
    its reason and the shard goes on. A segmenter that raises on every frame of a shard is broken, not
    the frames: then the shard fails (and is retried) instead of becoming a store of bad frames.
    """
    from unsamflow.pipeline.derive import DeriveConfig, derive
    from unsamflow.pipeline.segmenters import BUILTIN_SEGMENTERS
    from unsamflow.pipeline.store import StoreWriter

    t_start = time.perf_counter()
    budget = frame_memory or default_frame_budget()
    emit = _progress_sink()
    shard = Manifest.load(shard_file)
    seg = worker_segmenter(spec)
    t_built = time.perf_counter()
    cfg = DeriveConfig.from_dict(derive_config)
    check = spec.name not in BUILTIN_SEGMENTERS
    store_path = Path(store_file)
    remove_stale_temps(store_path)
    stats = {"shard": store_path.name, "frames": 0, "masks": 0, "bad": {}, "segmenter_s": 0.0,
             "build_s": t_built - t_start}
    source = {
        "layout": shard.layout,
        "root": shard.root,
        "manifest_sha256": shard.meta.get("manifest_sha256"),
        "shard_file": Path(shard_file).name,
    }
    with StoreWriter(
        store_path,
        segmenter=segmenter_info(seg, spec),
        derive_config=cfg.to_dict(),
        source=source,
        shard=dict(shard.meta),
    ) as writer:
        def bad(frame_id: str, reason: str) -> None:
            writer.add_bad(frame_id, reason)
            stats["bad"][frame_id] = reason
            emit({"frame": frame_id, "masks": 0, "bad": reason})

        def finish(frame_id: str, shape: tuple[int, int], sha: str, records: list[dict], masks) -> None:
            try:
                bboxes = np.asarray([r["bbox"] for r in records], np.float64).reshape(-1, 4)
                full_seg, key_idx = derive(masks, bboxes, cfg)
                writer.add_frame(frame_id, image_shape=shape, sha256=sha, records=records,
                                 full_seg=full_seg, key_objects=key_idx, masks=masks)
            except MemoryError:  # add_frame checks everything before it appends: the store is intact
                bad(frame_id, f"out of memory deriving or writing {len(records)} masks of a "
                              f"{shape[0]}x{shape[1]} (HxW) frame")
                return
            except StoreError as exc:  # this frame's records do not fit the store format
                bad(frame_id, str(exc))
                return
            stats["frames"] += 1
            stats["masks"] += len(records)
            emit({"frame": frame_id, "masks": len(records), "bad": None})

        # Frame i is derived and written on a second thread while frame i + 1 is segmented: on a GPU
        # worker (or a spare core) that work costs no wall time. One frame in flight bounds memory.
        failures: list[BaseException] = []
        readable = 0
        with ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
            pending = None

            def after_previous(fn, *args) -> None:
                nonlocal pending
                if pending is not None:
                    pending.result()  # re-raises a failure of the previous frame here
                pending = finisher.submit(fn, *args)

            for frame, rgb, sha, reason in read_ahead(shard):
                if reason is not None:
                    after_previous(bad, frame.id, reason)
                    continue
                readable += 1
                t0 = time.perf_counter()
                try:
                    records, masks = segment_frame(seg, rgb, frame.id, budget, spec, check)
                except BadFrameError as exc:
                    after_previous(bad, frame.id, exc.reason)
                    continue
                except BadInputError:  # a plug-in breaking the record format: the segmenter's fault
                    raise
                except Exception as exc:  # this frame only, unless it happens to every frame
                    failures.append(exc)
                    why = f"segmenter {spec.name!r} failed: {type(exc).__name__}: {exc}"
                    after_previous(bad, frame.id, why)
                    continue
                finally:
                    stats["segmenter_s"] += time.perf_counter() - t0
                    del rgb
                after_previous(finish, frame.id, tuple(masks.shape), sha, records, masks)
            if pending is not None:
                pending.result()
        if failures and len(failures) == readable:
            raise failures[0]
        writer.commit()
    stats["task_s"] = time.perf_counter() - t_start
    return stats
