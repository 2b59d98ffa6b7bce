"""The `segment` stage, worker side: one shard through a segmenter into one HDF5 store.

The unit of work is a shard; pipeline/dispatch.py (the client side) plans and submits them. A task
reads its frames, segments them with the worker's cached segmenter, derives full_seg and key objects,
and writes the store under a temporary name that is renamed only when the shard is complete: a killed
worker leaves nothing visible, Dask reruns the task elsewhere, and a later run skips every complete
shard. One frame that fails (memory budget, segmenter error) is recorded bad; its shard goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError, StoreError, is_disk_full
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segmenters.base import Segmenter, SegmenterSpec

PROGRESS_TOPIC = "unsamflow-progress"

_CACHE: dict[str, Segmenter] = {}
_BUILD_LOCK = threading.Lock()  # tasks on two threads of one worker build one model, not two
# One frame at a time in the worker's segmenter: SAM's generator keeps the image it works on in the
# model (set_image), so two threads calling it at once would mix frames, and a GPU runs one batch at a
# time anyway. With --threads-per-worker 2 a worker still gains: while one task waits here, another
# reads, crops, derives and writes, so the segmenter never idles between shards.
_CALL_LOCK = threading.Lock()


def worker_segmenter(spec: SegmenterSpec) -> Segmenter:
    """The segmenter of this worker process, built on first use and then reused.

    Only one is kept: a worker asked for another configuration drops the old model first, so two
    SAM models never share one GPU.
    """
    key = spec.key()
    with _BUILD_LOCK:
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


def segment_frame(seg: Segmenter, rgb: np.ndarray, frame_id: str, budget: int | None,
                  spec: SegmenterSpec, timings: dict[str, float] | None = None) -> list[dict]:
    """The segmenter's records of one frame (run-length masks where it offers them), or BadFrameError
    when the frame cannot fit.

    A segmenter says what a frame will cost it (`peak_bytes(shape)`: SAM's full-resolution mask logits,
    `graph`'s label maps and one mask): a frame whose peak, with the frame itself, is over the budget is
    refused before the call that would kill the worker. A plug-in without `peak_bytes` is checked only
    on its output (CropMasks), after the call.
    Only the segmenter runs here; turning its records into masks is `frame_masks`, on another thread.
    A segmenter that is not `thread_safe` is called by one thread of the worker at a time (_CALL_LOCK);
    `timings` gets the seconds waited for it ("wait") and spent in it ("segment").
    """
    from unsamflow.pipeline.masks import fmt_bytes

    shape = rgb.shape[:2]
    peak = getattr(seg, "peak_bytes", None)
    need = int(peak(shape)) + rgb.nbytes if callable(peak) else 0  # its peak while the frame is held
    if budget is not None and need > budget:
        raise BadFrameError(
            frame_id, f"out of memory budget: segmenter {spec.name!r} needs about {fmt_bytes(need)} "
            f"for a {shape[0]}x{shape[1]} (HxW) frame, over the per-frame budget of {fmt_bytes(budget)} "
            "(--frame-memory); raise it, or lower the segmenter's batch size or working resolution")
    call = getattr(seg, "segment_compact", seg)  # run-length masks where the segmenter offers them
    lock = contextlib.nullcontext() if getattr(seg, "thread_safe", False) else _CALL_LOCK
    t0 = time.perf_counter()
    try:
        with lock:
            t1 = time.perf_counter()
            try:
                return call(rgb)
            finally:
                if timings is not None:
                    timings["wait"] = timings.get("wait", 0.0) + t1 - t0
                    timings["segment"] = timings.get("segment", 0.0) + time.perf_counter() - t1
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise BadFrameError(frame_id, f"out of memory in segmenter {spec.name!r} for a "
                                f"{shape[0]}x{shape[1]} (HxW) frame: {type(exc).__name__}: {exc}") from None
        raise


def frame_masks(records: list[dict], shape: tuple[int, int], frame_id: str, budget: int | None,
                spec: SegmenterSpec, check: bool):
    """(records without their masks, CropMasks): each mask cropped to its tight box, within `budget`.

    `check`: a plug-in's records are checked before anything is made of them (BadInputError names the
    segmenter: its output format is broken, not the frame).
    """
    from unsamflow.pipeline.masks import CropMasks
    from unsamflow.pipeline.segmenters.base import check_records

    if check:
        check_records(records, shape, spec.name)
    try:
        masks = CropMasks.from_records(records, shape, budget, frame_id)
    except MemoryError:
        raise BadFrameError(frame_id, f"out of memory converting {len(records)} masks of a "
                            f"{shape[0]}x{shape[1]} (HxW) frame") from None
    meta = [{k: v for k, v in r.items() if k != "segmentation"} for r in records]
    return meta, masks


# A progress event costs a message to the scheduler and on to the client; per frame that is 20,000
# messages for 20,000 frames. Events carry counts and go at most this often (and at a shard's end).
PROGRESS_INTERVAL_S = 0.5


class ProgressSink:
    """Counts a task's frames and publishes them to the client in batches (a no-op outside Dask)."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S):
        try:
            from distributed import get_worker

            worker = get_worker()
            self._send = lambda event: worker.log_event(PROGRESS_TOPIC, event)
        except ValueError:  # called directly, not as a Dask task: nobody is listening
            self._send = None
        self.interval = interval
        self._frames = self._bad = 0
        self._masks: int | None = None
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def frame(self, masks: int | None) -> None:
        """One frame done: `masks` found, or None for a bad frame."""
        with self._lock:
            self._frames += 1
            if masks is None:
                self._bad += 1
            else:
                self._masks = masks
            due = time.monotonic() - self._last >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._frames:
                return
            event = {"frames": self._frames, "bad": self._bad, "masks": self._masks}
            self._frames = self._bad = 0
            self._last = time.monotonic()
        if self._send is not None:
            self._send(event)


def remove_stale_temps(store_path: Path) -> None:
    """Temp files of this store left by a killed writer (the final name is never partial)."""
    from unsamflow.pipeline.atomic import stale_temps

    for tmp in stale_temps(store_path):
        tmp.unlink(missing_ok=True)


def _read(shard: Manifest, frame, timings: dict[str, float]) -> tuple:
    from unsamflow.pipeline.images import read_rgb

    try:
        return (frame, *read_rgb(shard.path(frame.id), frame.id, timings), None)
    except BadFrameError as exc:
        return frame, None, None, exc.reason
    except BadInputError as exc:  # e.g. an id that escapes the root
        return frame, None, None, str(exc)


def read_ahead(shard: Manifest, timings: dict[str, float] | None = None):
    """(frame, rgb, sha256, bad reason) per frame, decoding the next frame while this one is segmented.

    Decoding and hashing release the GIL, so on a GPU worker (or a spare core) reading costs no time.
    `timings` collects the read / hash / decode seconds (see images.read_rgb).
    """
    frames = shard.frames
    timings = {} if timings is None else timings
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        nxt = pool.submit(_read, shard, frames[0], timings) if frames else None
        for i in range(len(frames)):
            cur = nxt.result()
            nxt = pool.submit(_read, shard, frames[i + 1], timings) if i + 1 < len(frames) else None
            yield cur


# Share of the frame budget that a frame's full-frame bool masks may take while they wait for the
# finisher (the next frame is segmented meanwhile); bigger ones are cropped on the segmenter's thread.
HAND_OVER_SHARE = 0.25


def hand_over(records, shape: tuple[int, int], budget: int | None) -> bool:
    """May these records go to the finisher thread as they are? Run-length masks (small) may; bool masks
    may while they take at most HAND_OVER_SHARE of the frame budget; anything malformed is checked
    right away instead."""
    if not (isinstance(records, list) and records and isinstance(records[0], dict)):
        return False
    from unsamflow.pipeline.masks import is_rle

    if is_rle(records[0].get("segmentation")):
        return True
    return budget is None or len(records) * shape[0] * shape[1] <= HAND_OVER_SHARE * budget


# Per-frame phases of a task, in order; their seconds are summed per shard (stats["phases_s"]).
PHASES = ("read", "hash", "decode", "wait", "segment", "stack", "derive", "encode", "write")


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
    its reason and the shard goes on. A segmenter that raises (or whose output cannot be stored) on
    every frame of a shard is broken, not the frames: then the shard fails (and is retried) instead
    of becoming a store of bad frames. Per-phase seconds come back in stats["phases_s"] (PHASES).
    """
    from unsamflow.pipeline.derive import DeriveConfig
    from unsamflow.pipeline.segmenters import BUILTIN_SEGMENTERS

    t_start = time.perf_counter()
    quiet_h5py_disk_full()
    budget = frame_memory or default_frame_budget()
    progress = ProgressSink()
    shard = Manifest.load(shard_file)
    seg = worker_segmenter(spec)
    t_built = time.perf_counter()
    cfg = DeriveConfig.from_dict(derive_config)
    check = spec.name not in BUILTIN_SEGMENTERS
    store_path = Path(store_file)
    remove_stale_temps(store_path)
    phases = dict.fromkeys(PHASES, 0.0)
    stats = {"shard": store_path.name, "frames": 0, "masks": 0, "bad": {}, "segmenter_s": 0.0,
             "build_s": t_built - t_start, "phases_s": phases}
    source = {
        "layout": shard.layout,
        "root": shard.root,
        "manifest_sha256": shard.meta.get("manifest_sha256"),
        "shard_file": Path(shard_file).name,
    }
    try:
        _write_store(shard, store_path, seg, spec, cfg, source, budget, check, progress, stats, phases)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        # Not transient: returned, not raised, so that Dask does not retry it; the client stops
        # dispatching. The writer has removed its temporary file.
        stats["disk_full"] = f"no space left on {store_path.parent}"
        stats["frames"], stats["masks"], stats["bad"] = 0, 0, {}
    progress.flush()
    stats["segmenter_s"] = phases["segment"]
    stats["task_s"] = time.perf_counter() - t_start
    return stats


def _h5py_disk_full_echo(exc: BaseException | None, where: object = None) -> bool:
    """Is this one of h5py's deallocators repeating a failed write of a full disk?"""
    return isinstance(exc, RuntimeError) and "No space left on device" in str(exc) and (
        "h5py" in repr(where) or "_dealloc" in "".join(traceback.format_tb(exc.__traceback__)))


def quiet_h5py_disk_full() -> None:
    """After a write failed for lack of space, h5py's deallocators retry the flush of every object of
    the dropped file and print a traceback each (twice: through sys.excepthook and as "Exception
    ignored in ... __dealloc__"), 30 lines for one full disk that the summary names once. Those, and
    only those, are not printed. Idempotent; installed in each worker process by its first task."""
    if getattr(sys.unraisablehook, "unsamflow_disk_full", False):
        return
    unraisable_before, except_before = sys.unraisablehook, sys.excepthook

    def unraisable(u) -> None:
        if not _h5py_disk_full_echo(u.exc_value, u.object):
            unraisable_before(u)

    def excepthook(kind, value, tb) -> None:
        if not _h5py_disk_full_echo(value):
            except_before(kind, value, tb)

    unraisable.unsamflow_disk_full = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = unraisable, excepthook


def _write_store(shard: Manifest, store_path: Path, seg: Segmenter, spec: SegmenterSpec, cfg, source: dict,
                 budget: int, check: bool, progress: ProgressSink, stats: dict, phases: dict) -> None:
    """segment_shard's work: every frame of `shard` segmented, derived and written into its store."""
    from unsamflow.pipeline.derive import derive
    from unsamflow.pipeline.store import StoreWriter

    with StoreWriter(
        store_path,
        segmenter=segmenter_info(seg, spec),
        derive_config=cfg.to_dict(),
        source=source,
        shard=dict(shard.meta),
    ) as writer:
        # Segmenter errors, and errors making masks of its output, per frame: when every readable frame
        # has one, the segmenter is broken rather than the frames, and the shard fails.
        failures: list[BaseException] = []

        def frame_error(exc: Exception, what: str) -> str:
            """Why a frame is bad after `exc`, or re-raise it. BadFrameError: the frame's own (over its
            budget, out of memory). BadInputError: the segmenter's (its options, its output format),
            so the shard fails. Anything else: this frame's, unless every frame has one (failures)."""
            if isinstance(exc, BadFrameError):
                return exc.reason
            if isinstance(exc, BadInputError) or is_disk_full(exc):
                raise exc
            failures.append(exc)
            return f"segmenter {spec.name!r} {what}: {type(exc).__name__}: {exc}"

        def bad(frame_id: str, reason: str) -> None:
            writer.add_bad(frame_id, reason)
            stats["bad"][frame_id] = reason
            progress.frame(None)

        def finish(frame_id: str, shape: tuple[int, int], sha: str, raw: list[dict] | None,
                   cropped: tuple | None = None, cropped_s: float = 0.0) -> None:
            """Records -> crops -> full_seg and key objects -> store, on the finisher thread (`cropped`:
            the crops were made on the segmenter's thread already, in `cropped_s` seconds)."""
            t0 = time.perf_counter() - cropped_s
            n = len(raw) if raw is not None else len(cropped[0])
            try:
                records, masks = cropped or frame_masks(raw, shape, frame_id, budget, spec, check)
                del raw, cropped
                t1 = time.perf_counter()
                bboxes = np.asarray([r["bbox"] for r in records], np.float64).reshape(-1, 4)
                full_seg, key_idx = derive(masks, bboxes, cfg)
                t2 = time.perf_counter()
                written = writer.write_s
                writer.add_frame(frame_id, image_shape=shape, sha256=sha, records=records,
                                 full_seg=full_seg, key_objects=key_idx, masks=masks)
                t3 = time.perf_counter()
            except MemoryError:  # add_frame checks everything before it appends: the store is intact
                bad(frame_id, f"out of memory deriving or writing {n} masks of a "
                              f"{shape[0]}x{shape[1]} (HxW) frame")
                return
            except StoreError as exc:  # this frame's records do not fit the store format
                bad(frame_id, str(exc))
                return
            except Exception as exc:
                bad(frame_id, frame_error(exc, "output unusable"))
                return
            flushed = writer.write_s - written
            phases["stack"] += t1 - t0
            phases["derive"] += t2 - t1
            phases["encode"] += t3 - t2 - flushed
            phases["write"] += flushed
            stats["frames"] += 1
            stats["masks"] += len(records)
            progress.frame(len(records))

        # The segmenter is the only thing on this thread: frame i + 1 is decoded on the read-ahead
        # thread and frame i - 1 cropped, derived and written on the finisher thread while frame i is
        # segmented, so on a GPU worker (or a spare core) that work costs no wall time. One frame in
        # flight each way bounds memory.
        readable = 0
        with ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
            pending = None

            def after_previous(fn, *args) -> None:
                nonlocal pending
                if pending is not None:
                    pending.result()  # re-raises a failure of the previous frame here
                pending = finisher.submit(fn, *args)

            for frame, rgb, sha, reason in read_ahead(shard, phases):
                if reason is not None:
                    after_previous(bad, frame.id, reason)
                    continue
                readable += 1
                shape = (int(rgb.shape[0]), int(rgb.shape[1]))
                try:
                    records = segment_frame(seg, rgb, frame.id, budget, spec, phases)
                except Exception as exc:
                    after_previous(bad, frame.id, frame_error(exc, "failed"))
                    continue
                finally:
                    del rgb
                if not hand_over(records, shape, budget):
                    # Full-frame bool masks too big to hold while the next frame is segmented: crop them
                    # now, on this thread. Run-length and small records go to the finisher whole.
                    t0 = time.perf_counter()
                    try:
                        cropped = frame_masks(records, shape, frame.id, budget, spec, check)
                    except Exception as exc:
                        after_previous(bad, frame.id, frame_error(exc, "output unusable"))
                        continue
                    finally:
                        del records
                    after_previous(finish, frame.id, shape, sha, None, cropped, time.perf_counter() - t0)
                    del cropped
                else:
                    after_previous(finish, frame.id, shape, sha, records)
                    del records
            if pending is not None:
                pending.result()
        if failures and len(failures) == readable:
            raise failures[0]
        t0 = time.perf_counter()
        writer.commit()
        phases["write"] += time.perf_counter() - t0
