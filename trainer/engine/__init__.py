"""Training engine: one loop for every preset, atomic checkpoints with exact resume, logging, DDP."""

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

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "capture_rng",
    "checkpoint_name",
    "load_checkpoint",
    "model_from_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
