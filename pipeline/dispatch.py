"""The `segment` stage, client side: which shards need work, submitting them to Dask, waiting with limits.

An existing store counts as complete only when its bytes match the checksum recorded at its commit and
it was made from this very shard (manifest sha256, root, frame ids); any other store is refused, named,
or made again with --repair. Every wait for the cluster has a time limit (`completed`): when no worker
is alive for `worker_timeout` seconds the unfinished shards fail with that reason, never hang.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from unsamflow.pipeline.canonical import json_roundtrip
from unsamflow.pipeline.errors import PipelineError, StoreError
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segment import PROGRESS_TOPIC, segment_shard
from unsamflow.pipeline.segmenters.base import SegmenterSpec


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
    startup_s: float = 0.0  # starting the local cluster (or connecting to one) until workers are up
    phases_s: dict[str, float] = field(default_factory=dict)  # per-frame phase -> seconds, summed (PHASES)
    dashboard: str | None = None
    stopped: str | None = None  # why dispatching stopped early (a full disk), with what is left to do

    def to_dict(self) -> dict:
        """For `--json`: every field (bad frames and failed shards with their reasons)."""
        from dataclasses import asdict

        return asdict(self)

    def summary(self) -> str:
        rate = self.frames / self.wall_s if self.wall_s > 0 else 0.0
        lines = [
            f"shards: {self.shards} ({self.written} written, {self.skipped} already complete, "
            f"{len(self.failed)} failed)",
            f"frames: {self.frames} segmented, {len(self.bad)} bad; masks: {self.masks}",
            f"time: {self.wall_s:.1f} s wall, {rate:.2f} frames/s; summed over workers: segmenter "
            f"{self.segmenter_s:.1f} s of {self.task_s:.1f} s in tasks (+{self.build_s:.1f} s building it)",
        ]
        if self.frames and self.phases_s:
            per = ", ".join(f"{k} {1e3 * v / self.frames:.1f}" for k, v in self.phases_s.items())
            lines.append(f"per frame (ms, summed over threads): {per}")
        for shard, why in sorted(self.repaired.items()):
            lines.append(f"  repair {shard}: {why}")
        for frame, reason in sorted(self.bad.items()):
            lines.append(f"  bad frame {frame}: {reason}")
        for shard, err in sorted(self.failed.items()):
            lines.append(f"  failed shard {shard}: {err}")
        if self.stopped:
            lines.append(f"stopped: {self.stopped}")
        return "\n".join(lines)


def store_path_for(shard_file: Path, store_dir: Path) -> Path:
    return store_dir / (shard_file.name.removesuffix(".json") + ".h5")


def existing_problem(store: Path, shard: Manifest, spec: SegmenterSpec, derive_config: dict,
                     full: bool = False, check_hashes: bool = True) -> str | None:
    """None when `store` is complete: its bytes match its checksum sidecar (checked before HDF5 opens
    it), it was made from this `shard` (manifest sha256, root, frame ids) and, when `full`, every
    frame decodes and checks out as in `verify` and every source image still has the sha256 stored
    with its masks (with not `check_hashes`: those modified after the store was written). Otherwise
    one line saying why (corrupt, unverifiable, stale). Raises StoreError when it was made by another
    segmenter or derive config: that is never repaired over."""
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.index import as_corrupt
    from unsamflow.pipeline.store.integrity import check_store_file
    from unsamflow.pipeline.verify import provenance_difference, read_frames, source_changes

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
    if scan is None:
        return None
    problems = list(scan.problems)
    if not problems:  # masks of images that changed since are stale
        written = None if check_hashes else dict.fromkeys(scan.sha, store.stat().st_mtime_ns)
        problems = [f"shard {store.name}, {line}"
                    for line in source_changes(shard, scan.sha, written_ns=written)[1].values()]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0] + more
    return None


@dataclass
class Plan:
    """Which shards still need work; complete stores are never touched again."""

    todo: list[tuple[Path, Path, int]]  # (shard file, store file, frames)
    skipped: int
    done_frames: int
    repair: dict[str, str] = field(default_factory=dict)  # store file -> why it is made again


def plan_shards(
    shard_files: list[Path], store_dir: Path, spec: SegmenterSpec, derive_config: dict, repair: bool = False,
    check_hashes: bool = True,
) -> Plan:
    """Shards without a store, and (with `repair`) those whose store `verify` would name: corrupt,
    unverifiable, stale, failing a full read or made from source images that changed since (all
    re-hashed; with not `check_hashes` those modified after the store). Without `repair` such a store is
    refused (StoreError naming every one), never taken as complete nor silently replaced."""
    todo, skipped, done_frames = [], 0, 0
    problems: dict[str, str] = {}
    for sf in shard_files:
        shard = Manifest.load(sf)
        n = len(shard.frames)
        store = store_path_for(sf, store_dir)
        problem = (existing_problem(store, shard, spec, derive_config, full=repair, check_hashes=check_hashes)
                   if store.exists() else "")
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
    from unsamflow.pipeline.progress import bar_disable

    store_dir.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_shards(shard_files, store_dir, spec, derive_config, repair)
    res = SegmentResult(shards=len(shard_files), skipped=plan.skipped, repaired=dict(plan.repair))
    if client is not None:
        res.dashboard = client.dashboard_link
    todo = plan.todo
    total = plan.done_frames + sum(n for *_, n in todo)
    bar = tqdm(total=total, initial=plan.done_frames, unit="frame", disable=bar_disable(progress),
               desc="segment")
    if not todo:
        bar.close()
        return res

    def on_event(event) -> None:  # a batch of frames of one task (segment.ProgressSink)
        msg = event[1] if isinstance(event, tuple) else event
        done = min(int(msg.get("frames", 1)), bar.total - bar.n)  # a retried shard reports its frames again
        if done > 0:
            bar.update(done)
        if msg.get("masks") is not None:
            bar.set_postfix_str(f"last: {msg['masks']} masks", refresh=False)

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    t0 = time.perf_counter()
    # Keys name the shard for the dashboard and are unique per run: Dask answers a submit whose key it
    # still holds with that earlier result, so a second run on the same client would get the first's.
    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(
            segment_shard, str(sf), str(store), spec, derive_config, frame_memory,
            key=f"segment-{store.name}-{run}", retries=retries, pure=False,
        ): store.name
        for sf, store, _ in todo
    }
    finished = 0  # frames (good and bad) of the shards finished so far
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
            if stats.get("disk_full"):  # not transient: stop dispatching instead of filling it again
                res.failed[name] = stats["disk_full"]
                left = [futures[f] for f in futures if not f.done()]
                with contextlib.suppress(Exception):
                    client.cancel([f for f in futures if not f.done()])
                res.stopped = disk_full_summary(store_dir, stats["disk_full"], left, res.failed)
                break
            res.written += 1
            # Progress events come in batches and may trail the result: count a finished shard whole.
            finished += stats["frames"] + len(stats["bad"])
            if bar.n < min(bar.total, plan.done_frames + finished):
                bar.update(min(bar.total, plan.done_frames + finished) - bar.n)
            res.frames += stats["frames"]
            res.masks += stats["masks"]
            res.bad.update(stats["bad"])
            res.segmenter_s += stats["segmenter_s"]
            res.task_s += stats["task_s"]
            res.build_s += stats["build_s"]
            for phase, seconds in stats.get("phases_s", {}).items():
                res.phases_s[phase] = res.phases_s.get(phase, 0.0) + seconds
    finally:
        res.wall_s = time.perf_counter() - t0
        with contextlib.suppress(Exception):  # the scheduler may be gone; nothing left to listen to
            client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    return res


def disk_full_summary(store_dir: Path, what: str, not_run: list[str], failed: dict[str, str]) -> str:
    """One line for a run stopped by a full disk: where, what is free, what the unwritten shards need
    (at the mean size of the complete stores there), and that the complete stores are kept."""
    import shutil

    from unsamflow.pipeline.masks import fmt_bytes
    from unsamflow.pipeline.store.index import store_files

    sizes = [p.stat().st_size for p in store_files(store_dir)]
    free = shutil.disk_usage(store_dir).free
    todo = len(not_run) + len([n for n, why in failed.items() if why == what])
    need = (f"the {todo} shards not written need about {fmt_bytes(todo * sum(sizes) / len(sizes))} (at "
            f"{fmt_bytes(sum(sizes) / len(sizes))} per store)" if sizes else f"{todo} shards not written")
    return (f"{what} ({fmt_bytes(free)} free): {need}; free space and run again: the {len(sizes)} complete "
            "stores are kept and skipped")


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
