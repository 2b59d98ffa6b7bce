"""From a checkpoint (or a training run's folder) to a ready network predictor."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from unsamflow.pipeline.errors import BadInputError
from unsamflow.trainer.evaluation.predictors import NetworkPredictor

_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")


def find_checkpoint(run: str | Path) -> Path:
    """A checkpoint file as is; in a run folder, the latest `ckpt_<iteration>.pt` (the engine's names),
    else the newest *.pt there."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise BadInputError(f"checkpoint or run folder not found: {run}")
    found = [p for p in run.rglob("*.pt") if not p.name.startswith(".")]
    numbered = [p for p in found if _CKPT.match(p.name)]
    if numbered:
        return max(numbered, key=lambda p: int(_CKPT.match(p.name).group(1)))
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    raise BadInputError(f"run folder {run} holds no checkpoint (*.pt)")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_network(
    checkpoint: str | Path,
    device: str | None = None,
    test_size: tuple[int, int] | None = None,
    pad_mode: str = "center",
) -> tuple[NetworkPredictor, dict]:
    """(predictor, resolved training config) from a checkpoint file or run folder. Errors name the file."""
    from unsamflow.trainer.engine.checkpoint import model_from_checkpoint

    path = find_checkpoint(checkpoint)
    device = device or default_device()
    model, config = model_from_checkpoint(path, map_location=device)
    predictor = NetworkPredictor(model, device=device, test_size=test_size, pad_mode=pad_mode)
    predictor.source = str(path)
    return predictor, config
