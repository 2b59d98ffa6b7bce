"""Assemble and run a training job: devices and seeds, data, model, optimiser, objective, hooks, resume.

Everything that can fail on user input (config, device options, datasets and stores, a checkpoint to
resume) is checked by `prepare` before anything is written, so a bad run leaves no half-written folder.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.engine import distributed
from unsamflow.trainer.engine.checkpoint import capture_rng, load_checkpoint, restore_rng
from unsamflow.trainer.engine.distributed import DistInfo, all_gather_objects
from unsamflow.trainer.engine.hooks import LATEST, CheckpointHook, EvalHook, LoggingHook
from unsamflow.trainer.engine.logging import RunLogger
from unsamflow.trainer.engine.loop import BatchStream, Trainer
from unsamflow.trainer.engine.objective import Objective
from unsamflow.trainer.engine.timing import PhaseTimer

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


def resolve_device(cfg: Any, dist: DistInfo) -> torch.device:
    """cfg.device ("auto" | "cpu" | "cuda") -> this rank's device. amp and channels_last are CUDA
    options: on CPU they are refused (an explicit error, not a silent no-op)."""
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device: cuda asked for, but no CUDA device is available (use device=cpu)")
    if kind == "cpu":
        if cfg.amp != "off":
            raise BadInputError(f"amp: {cfg.amp} needs a CUDA device; on CPU set amp=off")
        if cfg.channels_last:
            raise BadInputError("channels_last: true is a CUDA option; on CPU set channels_last=false")
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank)


def seed_everything(seed: int, rank: int) -> None:
    """torch, numpy and Python seeds; ranks differ so their augmentations do (weights are broadcast)."""
    torch.manual_seed(seed)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)


def model_args(cfg: Any) -> dict[str, Any]:
    m = cfg.model
    return {"mask_features": m.mask_features, "search_range": m.search_range, "num_levels": m.num_levels,
            "normalize_corr_features": m.normalize_corr_features}


def build_train_set(cfg: Any, spec: str | None = None):
    """The training pairs of `spec` (default: data.dataset's first phase) joined with their stores
    (checked: empty sets, uncovered stores, sizes)."""
    from unsamflow.trainer.data import CoTransformConfig, open_pairs, parse_phases

    d = cfg.data
    spec = spec if spec is not None else parse_phases(d.dataset)[0].spec
    if d.masks is None and (cfg.model.mask_features or any(s.key_aug or s.w_hg > 0 for s in cfg.stages)):
        raise BadInputError("data.masks: this config uses masks (+mf, +aug or +hg) but no mask store is "
                            "given (data.masks.KEY=STORE_DIR)")  # fmt: skip
    transform = CoTransformConfig(crop=tuple(d.crop), hflip=d.hflip, vflip=d.vflip, swap=d.swap,
                                  resize=tuple(d.resize) if d.resize is not None else None)  # fmt: skip
    ko = cfg.augment.key_objects
    return open_pairs(spec, d.roots, d.masks, transform=transform, max_key_objects=d.max_key_objects,
                      gt=False, check=d.check, seed=cfg.seed,
                      key_options={"require_track": ko.require_track, "track_motion": ko.track_motion})


def build_evaluator(cfg: Any, device: torch.device):
    """A function model -> metrics on data.val_dataset (None when there is none). Each rank evaluates
    its share of the pairs; the metric sums are all-reduced, so every rank gets the full result.
    Frames are resized to the method's test size of the dataset (KITTI 256x832, Sintel 448x1024; others
    native), as `evaluate` does by default, so the numbers logged in training are the published protocol's."""
    if not cfg.data.val_dataset:
        return None
    from unsamflow.pipeline.flow import open_dataset
    from unsamflow.trainer.data import lookup, parse_mix
    from unsamflow.trainer.evaluation.evaluator import evaluate
    from unsamflow.trainer.evaluation.padding import default_test_size
    from unsamflow.trainer.evaluation.predictors import NetworkPredictor
    from unsamflow.trainer.evaluation.segs import open_segs

    name = cfg.data.val_dataset
    (part, *more) = parse_mix(name)
    if more:
        raise BadInputError(f"data.val_dataset: evaluate one dataset, got the mix {name!r}")
    dataset = open_dataset(part.name, lookup(cfg.data.roots, part, "roots"), gt_only=True)
    if len(dataset) == 0:
        raise BadInputError(f"data.val_dataset: {name!r} has no pairs with ground truth")
    segs = open_segs(lookup(cfg.data.masks, part, "masks")) if cfg.data.masks is not None else None
    if cfg.model.mask_features and segs is None:
        raise BadInputError(f"data.masks: the model has mask features (+mf); evaluating {name!r} needs its "
                            "stores (data.masks.KEY=STORE_DIR) or no data.val_dataset")  # fmt: skip
    if segs is not None:  # now, not at the first evaluation hours into the run
        segs.check_covers(f for pr in dataset.pairs for f in (pr.frame1, pr.frame2))

    def run(model: torch.nn.Module) -> dict[str, Any]:
        info = distributed.current()
        net = getattr(model, "module", model)
        indices = range(info.rank, len(dataset), info.world_size)
        start = time.perf_counter()
        predictor = NetworkPredictor(net, device, test_size=default_test_size(part.name))
        result = evaluate(predictor, dataset, name, segs=segs, indices=indices)
        net.train()
        metrics = distributed.all_reduce_metrics(result.accumulators["model"]).compute()
        return {"dataset": name, **metrics, "eval_seconds": time.perf_counter() - start}

    return run


@dataclass
class Prepared:
    """What `prepare` checked and built; nothing is written yet."""

    cfg: Any
    run_dir: Path
    dist: DistInfo
    device: torch.device
    train_set: Any
    evaluate: Any
    checkpoint: dict[str, Any] | None
    init_weights: dict[str, Any] | None = None  # model.init_from's weights (a new run only)
    notes: list[str] = field(default_factory=list)  # lines the run logs when it starts (init, extension)
    extension: dict[str, int] | None = None  # a resumed run's schedule extension: {"at", "from", "to"}
    phase_sets: list[Any] = field(default_factory=list)  # one train set per data phase (data.dataset)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ckpt_XXXXXXX.pt in `folder` (by iteration), else latest.pt, else None. The numbered
    file decides: a run killed between writing it and relinking latest.pt resumes from it."""
    numbered = sorted(folder.glob("ckpt_[0-9]*.pt"), key=lambda f: int(f.stem[5:])) if folder.is_dir() else []
    if numbered:
        return numbered[-1]
    return folder / LATEST if (folder / LATEST).exists() else None


def run_holds(run_dir: Path) -> list[str]:
    """The checkpoints of an earlier run in `run_dir`, if any. A config alone (with temporaries of a
    save that never finished) is a run stopped before its first checkpoint: `prepare` starts it again."""
    folder = run_dir / CHECKPOINTS
    found = sorted(p for p in folder.glob("*.pt") if not p.name.startswith(".")) if folder.is_dir() else []
    return [str(p) for p in found]


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's write lock (the pipeline's: an flock naming its holder) for a whole run, so
    that a second `train` on the same --out (new, or --resume of a live run) is refused naming the
    first, and the temporaries it finds are a dead run's. Only the process of rank 0 takes it (torchrun
    sets RANK); the others write nothing of their own there."""
    from unsamflow.pipeline.lock import output_lock

    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield
        return
    with output_lock(run_dir, "unsamflow-trainer train"):
        yield


# What `--resume KEY=VALUE` may change: the length of the schedule and how often things are logged.
RESUME_KEYS = ("optim.iterations", "logging.")


def prepare(cfg: Any, run_dir: str | Path, resume: bool = False, init_method: str | None = None,
            resume_overrides: Sequence[str] = ()) -> Prepared:  # fmt: skip
    """Check everything a run needs (resume: take the config from the run's latest checkpoint; then
    `resume_overrides` may extend optim.iterations or change logging.*). Joins the torch.distributed group
    when launched by torchrun (init_method: see init_distributed)."""
    from unsamflow.trainer.config import config_from_dict, config_to_dict

    run_dir = Path(run_dir)
    checkpoint = None
    extension = None
    notes: list[str] = []
    stopped_early = (run_dir / CONFIG_FILE).is_file() and not run_holds(run_dir)
    if resume and stopped_early:  # killed before its first checkpoint: its config, from iteration 0
        saved = _config_file(run_dir / CONFIG_FILE)
        if cfg is not None and config_to_dict(cfg) != config_to_dict(saved):
            diff = sorted(_diff(config_to_dict(cfg), config_to_dict(saved)))
            raise BadInputError(f"--resume: the given config differs from the run's ({run_dir / CONFIG_FILE})"
                                f" in {', '.join(diff[:8])}; resume without --preset/overrides or start a "
                                "new run")  # fmt: skip
        cfg = saved
        if resume_overrides:
            cfg, _ = _resume_changes(saved, resume_overrides, 0, run_dir / CONFIG_FILE)
        notes.append(f"--resume: {run_dir} holds no checkpoint yet (its run stopped before the first one): "
                     f"starting it from iteration 0 with its {CONFIG_FILE}")  # fmt: skip
    elif resume:
        latest = latest_checkpoint(run_dir / CHECKPOINTS)
        if latest is None:
            raise BadInputError(f"--resume: {run_dir} holds no checkpoint (no {CHECKPOINTS}/ckpt_*.pt); "
                                "start a new run without --resume in an empty folder")  # fmt: skip
        checkpoint = load_checkpoint(latest)
        saved = config_from_dict(checkpoint["config"])
        if cfg is not None and config_to_dict(cfg) != config_to_dict(saved):
            a, b = config_to_dict(cfg), config_to_dict(saved)
            diff = sorted(_diff(a, b))
            raise BadInputError(f"--resume: the given config differs from the run's ({latest}) in "
                                f"{', '.join(diff[:8])}; resume without --preset/overrides or start a "
                                "new run")  # fmt: skip
        cfg = saved
        if resume_overrides:
            cfg, extension = _resume_changes(saved, resume_overrides, checkpoint["iteration"], latest)
    elif run_holds(run_dir):
        raise BadInputError(f"{run_dir} already holds a run ({', '.join(run_holds(run_dir)[-2:])}); use "
                            "--resume to continue it or choose another --out")  # fmt: skip
    elif stopped_early:
        notes.append(f"{run_dir} holds a run stopped before its first checkpoint ({CONFIG_FILE} only): "
                     f"starting again, its {CONFIG_FILE} replaced by this run's")  # fmt: skip
    dist = distributed.init_distributed("cuda" if _wants_cuda(cfg) else "cpu", init_method)
    device = resolve_device(cfg, dist)
    if cfg.optim.batch_size % dist.world_size:
        raise BadInputError(f"optim.batch_size: {cfg.optim.batch_size} is not divisible by the "
                            f"{dist.world_size} processes (the batch is split over them)")  # fmt: skip
    from unsamflow.trainer.data import parse_phases

    phases = parse_phases(cfg.data.dataset)  # one mix, or phases of mixes: every one checked now
    phase_sets = [build_train_set(cfg, phase.spec) for phase in phases]
    train_set = phase_sets[0]
    per_rank = cfg.optim.batch_size // dist.world_size
    for phase, pairs in zip(phases, phase_sets, strict=True):
        if len(pairs) // dist.world_size < per_rank:
            raise BadInputError(f"data.dataset: {phase.spec!r} has {len(pairs)} usable pairs, fewer than one "
                                f"batch ({per_rank} per process x {dist.world_size})")  # fmt: skip
    evaluate = build_evaluator(cfg, device)
    p = Prepared(cfg, run_dir, dist, device, train_set, evaluate, checkpoint, extension=extension)
    p.phase_sets = phase_sets
    p.notes.extend(notes)
    if train_set.skipped_summary():
        p.notes.append(train_set.skipped_summary())
    if checkpoint is None and cfg.model.init_from:
        from unsamflow.trainer.engine.init_from import describe, load_init_weights, match_weights
        from unsamflow.trainer.model import PWCLite

        weights = load_init_weights(cfg.model.init_from)
        missing, unexpected = match_weights(PWCLite(**model_args(cfg)), weights, cfg.model.init_strict,
                                            cfg.model.init_from)  # fmt: skip
        p.init_weights = weights
        p.notes.append(describe(cfg.model.init_from, weights, missing, unexpected))
    return p


def _config_file(path: Path) -> Any:
    """The resolved config a run wrote to `path` (config.yaml), checked like any config."""
    import yaml
    from unsamflow.trainer.config import config_from_dict

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BadInputError(f"{path}: unreadable run config ({exc})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: not a run config (a mapping of settings)")
    return config_from_dict(data)


def _resume_changes(saved: Any, overrides: Sequence[str], iteration: int,
                    latest: Path) -> tuple[Any, dict[str, int] | None]:  # fmt: skip
    """The resumed run's config with `overrides` applied (only RESUME_KEYS), and the schedule extension."""
    from unsamflow.trainer.config import config_from_dict, config_to_dict
    from unsamflow.trainer.config.loader import apply_override

    data = config_to_dict(saved)
    for item in overrides:
        apply_override(data, item)
    new = config_from_dict(data)
    changed = _diff(config_to_dict(saved), config_to_dict(new))
    refused = [k for k in changed if not k.startswith(RESUME_KEYS)]
    if refused:
        raise BadInputError(f"--resume: {', '.join(refused)} cannot change in a resumed run ({latest}); only "
                            "optim.iterations (to extend it) and logging.* can; start a new run, e.g. with "
                            f"model.init_from={latest} to keep the weights")  # fmt: skip
    old, total = saved.optim.iterations, new.optim.iterations
    if total < iteration:
        raise BadInputError(f"--resume: optim.iterations={total} is before the checkpoint's iteration "
                            f"{iteration} ({latest})")  # fmt: skip
    return new, ({"at": iteration, "from": old, "to": total} if total != old else None)


def _wants_cuda(cfg: Any) -> bool:
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{path}.{k}".lstrip("."))]
    return [] if a == b else [path or "(root)"]


def param_groups(model: torch.nn.Module, weight_decay: float, bias_decay: float) -> list[dict[str, Any]]:
    """Adam's parameter groups as the reference's trainer makes them: L2 decay on ``.weight`` tensors,
    ``bias_decay`` on ``.bias`` tensors, none on anything else. Empty groups are left out."""
    groups: dict[str, list[torch.nn.Parameter]] = {"weight": [], "bias": [], "other": []}
    for name, p in model.named_parameters():
        groups["weight" if ".weight" in name else "bias" if ".bias" in name else "other"].append(p)
    decay = {"weight": weight_decay, "bias": bias_decay, "other": 0.0}
    return [{"params": ps, "weight_decay": decay[k]} for k, ps in groups.items() if ps]


def build_optimizer(cfg: Any, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """Adam and its schedule (OneCycle: warm-up fraction, linear or cosine anneal; or constant)."""
    o = cfg.optim
    optimizer = torch.optim.Adam(param_groups(model, o.weight_decay, o.bias_decay), lr=o.lr,
                                 betas=tuple(o.betas), eps=o.eps)  # fmt: skip
    if o.schedule == "onecycle":
        pct = o.warmup
        if abs(pct * o.iterations - 1) < 1e-9:  # a warm-up of exactly one step divides by 0 in OneCycleLR
            pct *= 1 - 1e-6
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=o.lr, total_steps=o.iterations, pct_start=pct, anneal_strategy=o.anneal,
            div_factor=o.div_factor, final_div_factor=o.final_div_factor, cycle_momentum=False)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return optimizer, scheduler


def build_trainer(p: Prepared, with_hooks: bool = True) -> Trainer:
    """Model, optimiser, objective, data stream and hooks, restored from `p.checkpoint` when resuming.
    with_hooks=False: a bare trainer that writes nothing (benchmarks, tests)."""
    from unsamflow.trainer.augment import KeyObjectCache
    from unsamflow.trainer.config import config_to_dict, stage_at, stage_starts
    from unsamflow.trainer.data import build_loader, set_epoch
    from unsamflow.trainer.model import PWCLite

    cfg, dist, device, ck = p.cfg, p.dist, p.device, p.checkpoint
    seed_everything(cfg.seed, dist.rank)
    model = PWCLite(**model_args(cfg), init=cfg.model.init).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    generator = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + dist.rank)
    ko = cfg.augment.key_objects
    slot = (min(200, cfg.data.crop[0]), min(300, cfg.data.crop[1]))  # an object never exceeds the crop
    cache = (KeyObjectCache(capacity=ko.cache_size, slot_size=slot).to(device)
             if any(s.key_aug for s in cfg.stages) else None)  # fmt: skip

    start, epoch, position = 0, 0, 0
    if ck is None and p.init_weights is not None:  # model.init_from (checked in prepare)
        model.load_state_dict(p.init_weights, strict=False)
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if p.extension is None:
            scheduler.load_state_dict(ck["scheduler"])
        else:
            was = optimizer.param_groups[0]["lr"]
            _relay_schedule(scheduler, ck["iteration"])
            e, starts, now = p.extension, stage_starts(cfg), optimizer.param_groups[0]["lr"]
            p.notes.append(f"--resume: schedule extended from {e['from']} to {e['to']} iterations at "
                           f"iteration {e['at']}: learning rate {was:.3g} -> {now:.3g} "
                           f"({cfg.optim.schedule} re-laid over {e['to']} iterations); stage starts now "
                           f"{starts}, stage {ck['stage']} (reached) stays on")  # fmt: skip
        scaler.load_state_dict(ck.get("scaler", {}))
        start, epoch, position = ck["iteration"], ck["data"]["epoch"], ck["data"]["position"]
        mine = _rank_state(ck, dist)
        restore_rng(mine["rng"], {"augment": generator})
        if cache is not None and mine.get("key_cache") is not None:
            cache.load_state_dict(mine["key_cache"])
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    per_rank = cfg.optim.batch_size // dist.world_size

    def phase_stream(train_set: Any, ep: int, pos: int) -> BatchStream:
        loader = build_loader(train_set, per_rank, shuffle=True, seed=cfg.seed, num_workers=cfg.data.workers,
                              drop_last=True)  # fmt: skip

        def make_loader(e: int, skip: int):
            set_epoch(loader, e, skip_batches=skip)
            return loader

        return BatchStream(make_loader, device, ep, pos)

    timer = PhaseTimer(device)
    sets = p.phase_sets or [p.train_set]
    stream: Any
    if len(sets) == 1:
        stream = phase_stream(p.train_set, epoch, position)
    else:  # data phases: one stream each, resumed from the checkpoint's record of each
        from unsamflow.trainer.data import parse_phases
        from unsamflow.trainer.engine.phases import PhasedStream, phase_starts

        phases = parse_phases(cfg.data.dataset)
        saved = ck["data"].get("phases") if ck is not None else None
        states = saved or [{"epoch": 0, "position": 0}] * len(sets)
        streams = [phase_stream(s, st["epoch"], st["position"]) for s, st in zip(sets, states, strict=True)]
        stream = PhasedStream(streams, phase_starts([ph.start for ph in phases], cfg.optim.iterations),
                              iteration=lambda: start)  # the trainer's, once it exists (below)
        if ck is not None and p.extension is not None:  # phases already reached stay, as stages do
            stream.floor = ck["data"].get("phase", 0)
    floor = ck["stage"] if ck is not None and p.extension is not None else 0  # reached stages stay on

    def stage_in_force(it: int) -> tuple[int, Any]:
        index, stage = stage_at(cfg, it)
        return (index, stage) if index >= floor else (floor, cfg.stages[floor])

    trainer = Trainer(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      objective=Objective(cfg, generator, cache, timer), data=stream,
                      stage_at=stage_in_force, max_iter=cfg.optim.iterations,
                      clip=cfg.optim.clip, timer=timer, start_iteration=start)  # fmt: skip
    if len(sets) > 1:
        stream.iteration = lambda: trainer.iteration

        def switched(k: int) -> None:
            if trainer.logger is not None:
                trainer.logger.write(f"data phase {k} from iteration {trainer.iteration}: "
                                     f"{parse_phases(cfg.data.dataset)[k].spec} ({sets[k].summary()})")

        stream.on_switch = switched
    if not with_hooks:
        return trainer

    extensions = [*(ck.get("schedule_extensions", []) if ck is not None else []),
                  *([p.extension] if p.extension is not None else [])]  # fmt: skip

    def state_fn(tr: Trainer) -> dict[str, Any]:
        ranks = all_gather_objects({"rng": capture_rng({"augment": generator}),
                                    "key_cache": cache.state_dict() if cache is not None else None})
        net = getattr(tr.model, "module", tr.model)
        return {
            "config": config_to_dict(cfg), "model_args": model_args(cfg), "model": net.state_dict(),
            "optimizer": tr.optimizer.state_dict(), "scheduler": tr.scheduler.state_dict(),
            "scaler": tr.scaler.state_dict(), "iteration": tr.iteration, "stage": tr.stage_index,
            "data": stream.state_dict(), "world_size": dist.world_size,
            "rng": ranks[0]["rng"], "key_cache": ranks[0]["key_cache"], "other_ranks": ranks[1:],
            "schedule_extensions": extensions,
        }

    lg = cfg.logging
    trainer.logger = RunLogger(p.run_dir, cfg.optim.iterations, start, enabled=dist.is_main,
                               tensorboard=lg.tensorboard, progress_seconds=lg.progress_seconds)  # fmt: skip
    trainer.hooks = [LoggingHook(trainer.logger, lg.every, lg.image_every)]
    if p.evaluate is not None:
        trainer.hooks.append(EvalHook(trainer.logger, lg.eval_every, p.evaluate))
    trainer.hooks.append(CheckpointHook(p.run_dir / CHECKPOINTS, lg.checkpoint_every, state_fn))
    return trainer


def train(p: Prepared) -> dict[str, Any]:
    """Run (or continue) training; returns a summary. Writes config.yaml, checkpoints/, tensorboard/,
    metrics.jsonl under the run folder (rank 0 only)."""
    import yaml
    from unsamflow.pipeline.atomic import write_bytes_atomic
    from unsamflow.trainer.config import config_to_dict

    if p.dist.is_main:
        p.run_dir.mkdir(parents=True, exist_ok=True)
        for tmp in (p.run_dir / CHECKPOINTS).glob(".*.tmp-*"):  # a killed save's (run_lock: not a live one's)
            tmp.unlink(missing_ok=True)
        if p.checkpoint is None or config_to_dict(p.cfg) != p.checkpoint["config"]:  # resumed with changes
            text = yaml.safe_dump(config_to_dict(p.cfg), sort_keys=False)
            write_bytes_atomic(p.run_dir / CONFIG_FILE, text.encode())
    distributed.barrier()
    from unsamflow.trainer.engine.preemption import PreemptionHook, StopFlag, catch_stop_signals

    trainer = build_trainer(p)
    for note in p.notes:
        trainer.logger.write(note)
    flag = StopFlag()  # SIGTERM / SIGUSR1: checkpoint after the step in flight, then Preempted
    saver = next(h for h in trainer.hooks if isinstance(h, CheckpointHook))
    trainer.hooks.append(PreemptionHook(flag, saver))
    start = trainer.iteration
    t0 = time.perf_counter()
    try:
        with catch_stop_signals(flag):
            trainer.train()
    finally:
        trainer.logger.close()
    hook = {type(h).__name__: h for h in trainer.hooks}
    written = hook["CheckpointHook"].written
    return {
        "run_dir": str(p.run_dir), "iterations": trainer.iteration,
        "resumed_from": start if p.checkpoint is not None else None, "steps_run": trainer.iteration - start,
        "seconds": time.perf_counter() - t0, "stage": trainer.stage_index, "losses": hook["LoggingHook"].last,
        "eval": hook["EvalHook"].results if "EvalHook" in hook else None,
        "checkpoint": str(written[-1] if written else p.run_dir / CHECKPOINTS / LATEST),
        "world_size": p.dist.world_size, "rank": p.dist.rank,
    }


def _relay_schedule(scheduler: Any, iteration: int) -> None:
    """Put a freshly built scheduler (over the extended length) at `iteration`: the learning rate becomes
    the new schedule's value there (OneCycle re-laid over the new length; constant stays constant)."""
    with warnings.catch_warnings():  # "step() before optimizer.step()": deliberate, nothing is skipped
        warnings.simplefilter("ignore")
        scheduler.last_epoch = iteration - 1
        scheduler.step()


def _rank_state(ck: dict[str, Any], dist: DistInfo) -> dict[str, Any]:
    """This rank's RNG state and key-object cache from a checkpoint (exact resume needs the same
    number of processes; otherwise every rank restarts from rank 0's, with a warning)."""
    ranks = [{"rng": ck["rng"], "key_cache": ck.get("key_cache")}, *ck.get("other_ranks", [])]
    if ck.get("world_size", 1) != dist.world_size:
        warnings.warn(f"checkpoint was written by {ck.get('world_size', 1)} processes, resuming with "
                      f"{dist.world_size}: random streams are not continued exactly",
                      stacklevel=2)  # fmt: skip
        return ranks[0]
    return ranks[dist.rank]
