"""Checkpoints: one self-describing file per save, written atomically, read without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(weights_only=True)`` can read it: random-number states are stored as tensors and lists
(``capture_rng``), never as pickled objects. ``format`` and ``format_version`` say what the file is;
a file without them, or from another version, is refused with a message that names it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow import __version__
from unsamflow.pipeline.atomic import replace_atomic, temp_path
from unsamflow.pipeline.errors import BadInputError

FORMAT = "unsamflow-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("config", "model_args", "model")


def checkpoint_name(iteration: int) -> str:
    """File name of the checkpoint written after `iteration` steps."""
    return f"ckpt_{iteration:07d}.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (plus format, format_version, library_version) to `path` atomically.

    The file appears complete or not at all: it is built under a temporary name in the same folder
    and renamed, so a run killed mid-save leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, **state}
    tmp = temp_path(path)
    try:
        torch.save(full, tmp)
        return replace_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights_only: no code runs while loading).

    Raises BadInputError naming the file when it is missing, not a torch file, foreign (no unsamflow
    format tag) or of another format version.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise BadInputError(f"checkpoint {path} {what}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for junk: UnpicklingError, RuntimeError, struct.error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"checkpoint {path} cannot be read as a safe (weights-only) torch file: {first[:200]}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise BadInputError(f"checkpoint {path} is not an unsamflow checkpoint (no format={FORMAT!r} tag)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise BadInputError(
            f"checkpoint {path} has format version {version!r}; this unsamflow ({__version__}) reads "
            f"version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise BadInputError(f"checkpoint {path} lacks {', '.join(missing)}")
    return state


def model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's network in eval mode, and the resolved training config (a dict)."""
    from unsamflow.trainer.model import PWCLite

    state = load_checkpoint(path, map_location=map_location)
    try:
        model = PWCLite(**state["model_args"])
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError) as exc:
        raise BadInputError(f"checkpoint {path}: network weights do not fit PWCLite: {exc}") from exc
    model.to(map_location).eval()
    return model, state["config"]


# --- random-number states as weights_only-safe values -------------------------------------------------

def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state of this process (torch CPU + CUDA, numpy, python, named generators)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng`: the process continues drawing the same numbers."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(state["generators"][name].cpu())
