"""The `track` stage: object tracks through every sequence of the manifest, written into the stores.

Unit of work: one sequence (a Dask task: read its frames' masks and images, link them, see
pipeline.linker), since a long sequence may be split over several stores. The client writes a store
(pipeline.store.tracks, atomic) as soon as every sequence with frames in it is linked, so a killed run
keeps each store it finished. Idempotent and resumable: a store whose tracks were made with the same
configuration and manifest is skipped; only the sequences of the other stores are linked again, and since
linking is deterministic a resumed run writes exactly the tracks an uninterrupted one would.

Cost (bench_tracks, 48 frames of 256x320 with ~20 graph masks each, one process): 1.5 s, of which DIS
0.4 s, reading masks and frames 0.35 s, the sparse matching 0.4 s; in `pipeline run` with the graph
segmenter the stage adds 7-12 % (it shares the segment stage's cluster).
"""

from __future__ import annotations

import contextlib
import importlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from unsamflow.pipeline.errors import BadInputError, PipelineError, StoreError
from unsamflow.pipeline.linker import FlowFn, TrackConfig, link_sequence
from unsamflow.pipeline.manifest import Manifest, safe_join
from unsamflow.pipeline.shard import manifest_sha256
from unsamflow.pipeline.store.tracks import track_id

BUILTIN_FLOWS = ("dis",)


class DISFlow:
    """OpenCV DIS (medium preset) on grey frames: new-frame pixels -> their place in the old frame."""

    def __init__(self, preset: str = "medium"):
        import cv2

        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        if preset not in presets:
            raise BadInputError(f"--flow-option preset must be one of {sorted(presets)}, got {preset!r}")
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(presets[preset])

    def __call__(self, new: np.ndarray, old: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        g1 = cv2.cvtColor(np.ascontiguousarray(new), cv2.COLOR_RGB2GRAY)
        g0 = cv2.cvtColor(np.ascontiguousarray(old), cv2.COLOR_RGB2GRAY)
        return self._dis.calc(g1, g0, None)


def make_flow(cfg: TrackConfig) -> FlowFn | None:
    """The flow of the "flow" linker (None for the "iou" linker): "dis", or a plug-in `module:factory`
    whose factory takes the config's options and returns `flow(new_rgb, old_rgb) -> (H, W, 2)`."""
    if cfg.linker != "flow":
        return None
    options = dict(cfg.options or {})
    if cfg.flow == "dis":
        return DISFlow(**options)
    module, sep, attr = cfg.flow.partition(":")
    if not sep:
        raise BadInputError(f"--flow {cfg.flow!r}: give one of {', '.join(BUILTIN_FLOWS)} or module:factory")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise BadInputError(f"--flow {cfg.flow!r}: cannot load it ({exc})") from None
    return factory(**options)


def make_carry(cfg: TrackConfig):
    """SAM 2's carrier for the "sam2" linker (options: checkpoint, model_type, release, device), else None."""
    if cfg.linker != "sam2":
        return None
    options = dict(cfg.options or {})
    if "checkpoint" not in options:
        raise BadInputError("--linker sam2 needs its checkpoint: -f checkpoint=PATH (and -f model_type=..., "
                            "as for the sam2 segmenter)")
    from unsamflow.pipeline.sam2_linker import Sam2Carrier

    try:
        return Sam2Carrier(**options)
    except TypeError as exc:
        raise BadInputError(f"--linker sam2: {exc} (options: checkpoint, model_type, release, device)"
                            ) from None


# -- the plan ------------------------------------------------------------------------------------------
@dataclass
class SequenceJob:
    number: int  # position of the sequence in the manifest: the high part of its track ids
    name: str
    frames: list[tuple[str, str | None]]  # (frame id, store file holding it as a good frame, or None: bad)
    stores: set[str] = field(default_factory=set)  # store files holding its frames (good or bad)


@dataclass
class TrackPlan:
    config: dict  # TrackConfig + manifest_sha256 + sequences: what a store's tracks are compared with
    jobs: list[SequenceJob]  # sequences to link (those with a frame in a store to write)
    stores: dict[str, set[int]]  # store file to write -> sequence numbers it needs
    skipped: list[str]  # stores already tracked with this config


def stored_config(cfg: TrackConfig, manifest: Manifest) -> dict:
    return {**cfg.to_dict(), "manifest_sha256": manifest_sha256(manifest),
            "sequences": len(manifest.sequences())}


def plan_tracks(store_dir: Path, manifest: Manifest, cfg: TrackConfig) -> TrackPlan:
    """Which stores need tracks and which sequences that takes; every frame of the manifest must be in a
    store (good or bad) and every stored frame in the manifest, else BadInputError naming them."""
    from unsamflow.pipeline.store import MaskStore, store_files
    from unsamflow.pipeline.store.tracks import track_config

    files = store_files(store_dir)
    if not files:
        raise BadInputError(f"no mask stores (*.h5) in {store_dir}; run `pipeline segment` first")
    want = stored_config(cfg, manifest)
    good: dict[str, str] = {}
    holder: dict[str, str] = {}
    done: list[str] = []
    for path in files:
        with MaskStore(path) as store:
            for fid in store.frame_ids:
                good[fid] = str(path)
                holder[fid] = str(path)
            for fid in store.bad_frames:
                holder[fid] = str(path)
            if track_config(store) == want:
                done.append(str(path))
    listed = set(manifest.frame_ids)
    extra = sorted(set(holder) - listed)
    if extra:
        raise BadInputError(f"{len(extra)} stored frame(s) are not in the manifest, e.g. {extra[0]!r} in "
                            f"{Path(holder[extra[0]]).name}: track with the manifest the stores were made "
                            "from")
    missing = [f for f in manifest.frame_ids if f not in holder]
    if missing:
        raise BadInputError(f"{len(missing)} frame(s) of the manifest are in no store, e.g. {missing[0]!r}: "
                            "run `pipeline segment` first")
    jobs, stores = [], {}
    done_set = set(done)
    for number, (name, frames) in enumerate(manifest.sequences().items()):
        job = SequenceJob(number, name, [(f.id, good.get(f.id)) for f in frames],
                          {holder[f.id] for f in frames})
        if job.stores - done_set:
            jobs.append(job)
            # every store of the sequence is rewritten: a relinked sequence (e.g. after one of its stores
            # was re-segmented) may number its tracks differently, and its ids must agree across stores
            for s in job.stores:
                stores.setdefault(s, set()).add(number)
    for path in files:  # a store of only bad frames whose sequences were all listed above
        if str(path) not in done_set and str(path) not in stores:
            stores[str(path)] = set()
    return TrackPlan(want, jobs, stores, [Path(p).name for p in done])


# -- the task ------------------------------------------------------------------------------------------
def track_sequence(job: SequenceJob, root: str, config: dict) -> dict[str, np.ndarray]:
    """Dask task: frame id -> track ids of its masks, for one sequence (see pipeline.linker)."""
    from unsamflow.pipeline.images import read_rgb
    from unsamflow.pipeline.store import MaskStore

    cfg = TrackConfig.from_dict({k: v for k, v in config.items()
                                 if k not in ("manifest_sha256", "sequences")})
    flow, carry = make_flow(cfg), make_carry(cfg)
    stores: dict[str, MaskStore] = {}

    def frames() -> Iterator[tuple]:
        for fid, path in job.frames:
            if path is None:
                yield None, None
                continue
            store = stores.get(path) or stores.setdefault(path, MaskStore(path))
            masks = store.read_crops(fid)
            image = None
            if flow is not None or carry is not None:
                image, _ = read_rgb(safe_join(root, fid), fid)
            yield masks, image

    try:
        numbers = link_sequence(frames(), flow, cfg, carry)
    finally:
        for s in stores.values():
            s.close()
    return {fid: track_id(job.number, n) for (fid, path), n in zip(job.frames, numbers, strict=True)
            if path is not None}


# -- the client ----------------------------------------------------------------------------------------
@dataclass
class TrackResult:
    stores: int = 0
    written: int = 0
    skipped: int = 0
    sequences: int = 0  # linked in this run
    frames: int = 0
    tracks: int = 0  # distinct track ids in the stores written
    failed: dict[str, str] = field(default_factory=dict)  # sequence or store -> error
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"track: {self.written} stores written, {self.skipped} already tracked, {len(self.failed)} "
                 f"failed; {self.sequences} sequences, {self.frames} frames linked into {self.tracks} tracks "
                 f"in {self.wall_s:.1f} s"]
        lines += [f"  failed {what}: {why}" for what, why in sorted(self.failed.items())]
        return "\n".join(lines)


def track_stores(store_dir: Path, manifest: Manifest, cfg: TrackConfig, client=None, *, retries: int = 2,
                 progress: bool = True, worker_timeout: float = 300.0, plan: TrackPlan | None = None
                 ) -> TrackResult:
    """Link every sequence that a store without (these) tracks needs, on `client`'s cluster (None: in this
    process), and write each store as soon as its sequences are linked."""
    from tqdm import tqdm
    from unsamflow.pipeline.dispatch import completed, describe_failure
    from unsamflow.pipeline.progress import bar_disable
    from unsamflow.pipeline.store.tracks import write_tracks

    t0 = time.perf_counter()
    plan = plan or plan_tracks(store_dir, manifest, cfg)
    res = TrackResult(stores=len(plan.stores) + len(plan.skipped), skipped=len(plan.skipped))
    waiting = {s: set(seqs) for s, seqs in plan.stores.items()}
    linked: dict[int, dict[str, np.ndarray]] = {}
    ids_written: set[int] = set()
    bar = tqdm(total=sum(len(j.frames) for j in plan.jobs), unit="frame", desc="track",
               disable=bar_disable(progress))

    def finish(number: int | None) -> None:
        """Write every store whose sequences are all linked now."""
        for store in sorted(waiting):
            if number is not None:
                waiting[store].discard(number)
            if waiting[store]:
                continue
            tracks = {fid: ids for n in plan.stores[store] for fid, ids in linked[n].items()}
            try:
                write_tracks(store, tracks, plan.config)
            except (PipelineError, OSError) as exc:
                res.failed[Path(store).name] = str(exc)
            else:
                res.written += 1
                ids_written.update(int(i) for ids in tracks.values() for i in ids)
                res.tracks = len(ids_written)
            del waiting[store]

    finish(None)  # stores of bad frames only
    by_number = {j.number: j for j in plan.jobs}
    try:
        if client is None:
            for job in plan.jobs:
                try:
                    linked[job.number] = track_sequence(job, manifest.root, plan.config)
                except PipelineError as exc:
                    res.failed[f"sequence {job.name}"] = str(exc)
                    continue
                _done(res, bar, job)
                finish(job.number)
        else:
            run = uuid.uuid4().hex[:8]
            futures = {client.submit(track_sequence, job, manifest.root, plan.config, retries=retries,
                                     key=f"track-{job.number}-{run}", pure=False): job.number
                       for job in plan.jobs}
            for fut, lost in completed(client, futures, worker_timeout):
                job = by_number[futures[fut]]
                if lost is not None:
                    res.failed[f"sequence {job.name}"] = lost
                    continue
                try:
                    linked[job.number] = fut.result()
                except PipelineError as exc:
                    res.failed[f"sequence {job.name}"] = str(exc)
                    continue
                except Exception as exc:
                    res.failed[f"sequence {job.name}"] = describe_failure(exc)
                    continue
                _done(res, bar, job)
                finish(job.number)
    finally:
        bar.close()
        res.wall_s = time.perf_counter() - t0
    for store, seqs in waiting.items():  # stores left: a sequence of theirs failed
        names = sorted(by_number[n].name for n in seqs if n not in linked)
        res.failed.setdefault(Path(store).name, f"not written: sequence(s) {', '.join(names)} failed")
    return res


def _done(res: TrackResult, bar, job: SequenceJob) -> None:
    res.sequences += 1
    res.frames += len(job.frames)
    bar.update(len(job.frames))


def run_track(store_dir: Path, manifest: Manifest, cfg: TrackConfig, cluster=None, retries: int = 2,
              progress: bool = True, cluster_context=None) -> TrackResult:
    """Plan, start a cluster only when there is work (`cluster_context(cluster)`, default open_cluster;
    None as `cluster`: in this process), link and write; the index is rebuilt when it exists (stores
    changed)."""
    from unsamflow.pipeline.cluster import open_cluster
    from unsamflow.pipeline.store.index import INDEX_NAME, build_index

    plan = plan_tracks(store_dir, manifest, cfg)
    make_flow(cfg)  # a bad --flow fails here, before any cluster starts
    if cfg.linker == "sam2" and plan.jobs:
        make_carry(cfg)  # so do a missing package, checkpoint or model type (the model is built once here)
    if not plan.jobs and not plan.stores:
        return TrackResult(stores=len(plan.skipped), skipped=len(plan.skipped))
    if cluster is None or not plan.jobs:
        res = track_stores(store_dir, manifest, cfg, None, progress=progress, plan=plan)
    else:
        with (cluster_context or open_cluster)(cluster) as client:
            res = track_stores(store_dir, manifest, cfg, client, retries=retries, progress=progress,
                               worker_timeout=cluster.worker_timeout, plan=plan)
    if res.written and (store_dir / INDEX_NAME).exists():
        with contextlib.suppress(StoreError):  # verify names a broken store; the tracks are written
            build_index(store_dir, manifest=manifest)
    return res


# -- verify ----------------------------------------------------------------------------------------------
MAX_TRACK_LINES = 10  # broken tracks are usually broken everywhere: name the first few


def track_problems(files: list[Path], manifest: Manifest) -> list[str]:
    """`verify`'s track checks, one line per problem: tracks of this manifest, one track per key object
    equal to its mask's, no id twice in one frame, every id within its frame's sequence, and all stores
    tracked alike (all or none, one configuration)."""
    from unsamflow.pipeline.store import MaskStore
    from unsamflow.pipeline.store.tracks import all_tracks, sequence_of, track_config

    number = {f.id: n for n, frames in enumerate(manifest.sequences().values()) for f in frames}
    sha = manifest_sha256(manifest)
    lines: list[str] = []
    configs: dict[str, list[str]] = {}
    for path in files:
        try:
            with MaskStore(path) as store:
                cfg = track_config(store)
                configs.setdefault("none" if cfg is None else str(sorted(cfg.items())), []).append(path.name)
                if cfg is None:
                    continue
                if cfg.get("manifest_sha256") != sha:
                    lines.append(f"shard {path.name}: tracks were made from another manifest; run "
                                 "`pipeline track` again")
                    continue
                lines += _store_track_problems(store, all_tracks(store), number, sequence_of)
        except StoreError as exc:
            lines.append(f"shard {path.name}: cannot read its tracks ({exc})")
    if len(configs) > 1:
        kinds = "; ".join(f"{', '.join(sorted(v)[:3])}{' ...' if len(v) > 3 else ''}: "
                          f"{'no tracks' if k == 'none' else 'tracks ' + k}"
                          for k, v in sorted(configs.items()))
        lines.append(f"stores are not tracked alike ({kinds}); run `pipeline track` on the directory")
    if len(lines) > MAX_TRACK_LINES:
        lines = lines[:MAX_TRACK_LINES] + [f"... and {len(lines) - MAX_TRACK_LINES} more track problems"]
    return lines


def _store_track_problems(store, tracks, number: dict[str, int], sequence_of) -> list[str]:
    mask_track, key_track = tracks
    name = store.path.name
    masks = int(store._mstart[-1] + store._mcount[-1]) if len(store) else 0
    keys = int(store._kstart[-1] + store._kcount[-1]) if len(store) else 0
    if len(mask_track) != masks or len(key_track) != keys:
        return [f"shard {name}: {len(mask_track)} mask tracks for {masks} masks, {len(key_track)} key-object "
                f"tracks for {keys} key objects"]
    out = []
    key_objects = store._file()["derived/key_objects"][()]
    for r, fid in enumerate(store.frame_ids):
        m0, mn = int(store._mstart[r]), int(store._mcount[r])
        k0, kn = int(store._kstart[r]), int(store._kcount[r])
        ids = mask_track[m0 : m0 + mn]
        if np.unique(ids).size != ids.size:
            out.append(f"shard {name}, frame {fid!r}: a track id appears twice in one frame")
        if ids.size and (sequence_of(ids) != number.get(fid, -1)).any():
            out.append(f"shard {name}, frame {fid!r}: track ids of another sequence (ids belong to one "
                       "sequence only)")
        kobj = key_objects[k0 : k0 + kn]
        if kobj.size and (kobj.min() < 0 or kobj.max() >= mn):
            continue  # a bad key-object index: verify's frame check names it
        if not np.array_equal(key_track[k0 : k0 + kn], ids[kobj]):
            out.append(f"shard {name}, frame {fid!r}: key-object tracks differ from their masks' tracks")
    return out
