"""Training engine: one loop for every preset, atomic checkpoints with exact resume, logging, DDP.

    p = prepare(load_config("kitti-aug-hg-mf", overrides), "runs/k")   # checks everything, writes nothing
    summary = train(p)                                                  # or build_trainer(p).train()

Modules: loop (Trainer.run_step, hooks API, BatchStream), objective (the stage-aware losses of a step),
hooks (checkpoint, logging, evaluation), checkpoint (files, RNG states), logging (TensorBoard, tqdm,
metrics.jsonl), distributed (torchrun, metric all-reduce), timing (seconds per phase), run (assembly).
"""

from unsamflow.trainer.engine.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    capture_rng,
    checkpoint_name,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng,
    save_checkpoint,
)
from unsamflow.trainer.engine.distributed import DistInfo, all_reduce_metrics, init_distributed
from unsamflow.trainer.engine.hooks import CheckpointHook, EvalHook, LoggingHook
from unsamflow.trainer.engine.logging import RunLogger, step_pictures
from unsamflow.trainer.engine.loop import BatchStream, HookBase, Trainer
from unsamflow.trainer.engine.objective import Objective, StepResult
from unsamflow.trainer.engine.run import Prepared, build_trainer, latest_checkpoint, prepare, train
from unsamflow.trainer.engine.timing import PhaseTimer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BatchStream",
    "CheckpointHook",
    "DistInfo",
    "EvalHook",
    "HookBase",
    "LoggingHook",
    "Objective",
    "PhaseTimer",
    "Prepared",
    "RunLogger",
    "StepResult",
    "Trainer",
    "all_reduce_metrics",
    "build_trainer",
    "capture_rng",
    "checkpoint_name",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "prepare",
    "restore_rng",
    "save_checkpoint",
    "step_pictures",
    "train",
]
