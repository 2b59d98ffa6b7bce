"""The `segment` stage: every shard through a segmenter on a Dask cluster, one HDF5 store per shard.

The unit of work is a shard. A task reads its frames, segments them with the worker's cached
segmenter, derives full_seg and key objects, and writes the store under a temporary name that
is renamed only when the shard is complete: a killed worker leaves nothing visible, Dask
reruns the task elsewhere, and a later run skips every complete shard. Complete means: the store's
bytes match the checksum recorded at its commit and it was made from this very shard (manifest
sha256, root, frame ids); any other existing store is refused, named, or made again with --repair.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from unsamflow.pipeline.canonical import json_roundtrip
from unsamflow.pipeline.errors import BadFrameError, BadInputError, PipelineError, StoreError
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segmenters.base import Segmenter, SegmenterSpec

PROGRESS_TOPIC = "unsamflow-progress"

# -- worker side ----------------------------------------------------------------------------

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
            f"for a {shape[1]}x{shape[0]} frame, over the per-frame budget of {fmt_bytes(budget)} "
            "(--frame-memory); raise it or lower the segmenter's batch size")
    call = getattr(seg, "segment_compact", seg)  # run-length masks where the segmenter offers them
    try:
        records = call(rgb)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise BadFrameError(frame_id, f"out of memory in segmenter {spec.name!r} for a "
                                f"{shape[1]}x{shape[0]} frame: {type(exc).__name__}: {exc}") from None
        raise
    if check:  # a plug-in's records must not reach the store malformed
        check_records(records, shape, spec.name)
    try:
        masks = CropMasks.from_records(records, shape, budget, frame_id)
    except MemoryError:
        raise BadFrameError(frame_id, f"out of memory converting {len(records)} masks of a "
                            f"{shape[1]}x{shape[0]} frame") from None
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
                              f"{shape[1]}x{shape[0]} frame")
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


# -- client side ----------------------------------------------------------------------------


@dataclass
class SegmentResult:
    shards: int = 0
    skipped: int = 0
    written: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # shard -> error
    repaired: dict[str, str] = field(default_factory=dict)  # store made again (--repair) -> what was wrong
    frames: int = 0
    masks: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # frame id -> reason
    wall_s: float = 0.0
    segmenter_s: float = 0.0  # inside the segmenter's calls, summed over workers
    task_s: float = 0.0  # inside shard tasks (read, segment, derive, write), summed over workers
    build_s: float = 0.0  # building segmenters (imports, weights), summed over workers
    dashboard: str | None = None

    def summary(self) -> str:
        rate = self.frames / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            f"shards: {self.shards} ({self.written} written, {self.skipped} already complete, "
            f"{len(self.failed)} failed)",
            f"frames: {self.frames} segmented, {len(self.bad)} bad; masks: {self.masks}",
            f"time: {self.wall_s:.1f} s wall, {rate:.2f} frames/s; summed over workers: segmenter "
            f"{self.segmenter_s:.1f} s of {self.task_s:.1f} s in tasks (+{self.build_s:.1f} s building it)",
        ]
        for shard, why in sorted(self.repaired.items()):
            lines.append(f"  repair {shard}: {why}")
        for frame, reason in sorted(self.bad.items()):
            lines.append(f"  bad frame {frame}: {reason}")
        for shard, err in sorted(self.failed.items()):
            lines.append(f"  failed shard {shard}: {err}")
        return "\n".join(lines)


def store_path_for(shard_file: Path, store_dir: Path) -> Path:
    return store_dir / (shard_file.name.removesuffix(".json") + ".h5")


def existing_problem(store: Path, shard: Manifest, spec: SegmenterSpec, derive_config: dict,
                     full: bool = False) -> str | None:
    """None when `store` is complete: its bytes match its checksum sidecar (checked before HDF5 opens
    it), it was made from this `shard` (manifest sha256, root, frame ids) and, when `full`, every
    frame decodes and checks out as in `verify`. Otherwise one line saying why (corrupt, unverifiable,
    stale). Raises StoreError when it was made by another segmenter or derive config: that is
    never repaired over."""
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.index import as_corrupt
    from unsamflow.pipeline.store.integrity import check_store_file
    from unsamflow.pipeline.verify import provenance_difference, read_frames

    try:
        check_store_file(store)
        ms = MaskStore(store)
        with ms:
            made_by, derived, source = ms.segmenter, ms.derive_config, ms.source
            stored = {*ms.frame_ids, *ms.bad_frames}
            scan = read_frames(ms) if full else None
    except StoreError as exc:
        return as_corrupt(store, exc)
    want = {"name": spec.name, "options": spec.options}
    if made_by.get("spec") != json_roundtrip(want):
        raise StoreError(
            f"{store} was made by segmenter {made_by.get('spec')}, this run uses {want}: shards of "
            "different segmenters cannot be mixed in one store; use another output directory"
        )
    if derived != json_roundtrip(derive_config):
        raise StoreError(
            f"{store} was derived with {derived}, this run asks for {derive_config}: "
            "run `pipeline derive` to re-derive, or use the stored thresholds"
        )
    stale = provenance_difference(store.name, source, manifest_sha=shard.meta.get("manifest_sha256"),
                                  root=shard.root, stored_ids=stored, frame_ids=shard.frame_ids)
    if stale:
        return stale
    if scan is not None and scan.problems:
        more = f" (and {len(scan.problems) - 1} more)" if len(scan.problems) > 1 else ""
        return scan.problems[0] + more
    return None


@dataclass
class Plan:
    """Which shards still need work; complete stores are never touched again."""

    todo: list[tuple[Path, Path, int]]  # (shard file, store file, frames)
    skipped: int
    done_frames: int
    repair: dict[str, str] = field(default_factory=dict)  # store file -> why it is made again


def plan_shards(
    shard_files: list[Path], store_dir: Path, spec: SegmenterSpec, derive_config: dict, repair: bool = False
) -> Plan:
    """Shards without a store, and (with `repair`) those whose store `verify` would name: corrupt,
    unverifiable, stale or failing a full read. Without `repair` such a store is refused (StoreError
    naming every one), never taken as complete nor silently replaced."""
    todo, skipped, done_frames = [], 0, 0
    problems: dict[str, str] = {}
    for sf in shard_files:
        shard = Manifest.load(sf)
        n = len(shard.frames)
        store = store_path_for(sf, store_dir)
        problem = existing_problem(store, shard, spec, derive_config, full=repair) if store.exists() else ""
        if problem is None:
            skipped += 1
            done_frames += n
            continue
        if problem:
            problems[store.name] = problem
        todo.append((sf, store, n))
    if problems and not repair:
        them = "it" if len(problems) == 1 else f"these {len(problems)} shards"
        raise StoreError(f"{'; '.join(problems.values())}: rerun with --repair to make {them} again "
                         "(or use another output directory)")
    return Plan(todo, skipped, done_frames, problems)


def segment_shards(
    shard_files: list[Path],
    store_dir: Path,
    spec: SegmenterSpec,
    derive_config: dict,
    client,
    *,
    retries: int = 2,
    progress: bool = True,
    plan: Plan | None = None,
    worker_timeout: float = 300.0,
    frame_memory: int | None = None,
    repair: bool = False,
) -> SegmentResult:
    """Run every incomplete shard on `client`'s cluster; complete stores are skipped, never rewritten.

    Never waits forever: when no worker is alive for `worker_timeout` s (every worker died, or the
    scheduler is gone), the shards not finished are reported failed with that reason.
    """
    from tqdm import tqdm

    store_dir.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_shards(shard_files, store_dir, spec, derive_config, repair)
    res = SegmentResult(shards=len(shard_files), skipped=plan.skipped, repaired=dict(plan.repair))
    if client is not None:
        res.dashboard = client.dashboard_link
    todo = plan.todo
    total = plan.done_frames + sum(n for *_, n in todo)
    bar = tqdm(total=total, initial=plan.done_frames, unit="frame", disable=not progress, desc="segment")
    if not todo:
        bar.close()
        return res

    def on_event(event) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        if bar.n < bar.total:  # a retried shard reports its frames again
            bar.update(1)
        if msg.get("masks") is not None:
            bar.set_postfix_str(f"last: {msg['masks']} masks", refresh=False)

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    t0 = time.perf_counter()
    futures = {
        client.submit(
            segment_shard, str(sf), str(store), spec, derive_config, frame_memory,
            key=f"segment-{store.name}", retries=retries, pure=False,
        ): store.name
        for sf, store, _ in todo
    }
    try:
        for fut, lost in completed(client, futures, worker_timeout):
            name = futures[fut]
            if lost is not None:
                res.failed[name] = lost
                continue
            try:
                stats = fut.result()
            except PipelineError as exc:
                res.failed[name] = str(exc)
                continue
            except Exception as exc:  # a shard failing after its retries: keep the others going
                res.failed[name] = describe_failure(exc)
                continue
            res.written += 1
            res.frames += stats["frames"]
            res.masks += stats["masks"]
            res.bad.update(stats["bad"])
            res.segmenter_s += stats["segmenter_s"]
            res.task_s += stats["task_s"]
            res.build_s += stats["build_s"]
    finally:
        res.wall_s = time.perf_counter() - t0
        with contextlib.suppress(Exception):  # the scheduler may be gone; nothing left to listen to
            client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    return res


def describe_failure(exc: BaseException) -> str:
    """A shard's error for the summary; a worker that kept dying is most often out of memory."""
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "KilledWorker":
        text += (" (the worker running this shard died each time it tried: most often out of memory; "
                 "see --frame-memory and the worker logs)")
    return text


def completed(client, futures, worker_timeout: float, poll: float = 1.0):
    """Yield (future, None) as futures finish, like distributed.as_completed, but never forever.

    Every `poll` s without a result the client asks the scheduler how many workers are alive (with a
    time limit). When none has been alive for `worker_timeout` s, or the scheduler cannot be reached
    for that long, the unfinished futures are cancelled and yielded as (future, why).
    """
    from distributed import wait

    pending = set(futures)
    since: float | None = None
    why = ""
    while pending:
        try:
            done, pending = wait(pending, timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = set()
        for fut in done:
            yield fut, None
        if not pending:
            return
        try:
            alive = len(client.nthreads(callback_timeout=max(poll, 5.0)))
            why = "every worker died (killed, or out of memory: see the worker logs)"
        except Exception as exc:  # scheduler gone or not answering
            alive = 0
            why = f"the scheduler does not answer ({type(exc).__name__}: {exc})"
        if alive or done:
            since = None
            continue
        since = since or time.monotonic()
        if time.monotonic() - since >= worker_timeout:
            break
    message = f"no Dask worker alive for {worker_timeout:.0f} s (--worker-timeout): {why}; shard not finished"
    with contextlib.suppress(Exception):
        client.cancel(list(pending))
    for fut in pending:
        yield fut, message
