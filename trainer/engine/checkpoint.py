"""Checkpoints: one self-describing file per save, written atomically, read without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(weights_only=True)`` can read it: random-number states are stored as tensors and lists
(``capture_rng``), never as pickled objects. ``format`` and ``format_version`` say what the file is;
a file without them, or from another version, is refused with a message that names it.

Beside each checkpoint ``<name>.sha256`` holds its sha256 in ``sha256sum``'s format (``sha256sum -c``
reads it), written after the rename (the old one removed first, so a checksum never describes another
file). Loading checks the file against it: a flipped byte changed a weight by 0.0078 and every command
took it. A checkpoint without one (older, foreign, or its writer died right after the rename) loads
with a one-line notice. A save that finds the disk full says so, naming the folder, and leaves the
earlier checkpoints as they were.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unsamflow import __version__
from unsamflow.pipeline.atomic import replace_atomic, temp_path, write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError, PipelineError, is_disk_full
from unsamflow.pipeline.images import file_sha256

FORMAT = "unsamflow-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("config", "model_args", "model")


def checkpoint_name(iteration: int) -> str:
    """File name of the checkpoint written after `iteration` steps."""
    return f"ckpt_{iteration:07d}.pt"


CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path: str | Path) -> Path:
    """`ckpt_0000100.pt` -> `ckpt_0000100.pt.sha256`."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | Path, sha256: str) -> Path:
    """Record `sha256` as `path`'s checksum (sha256sum's line: the hex digest, two spaces, the name)."""
    path = Path(path)
    return write_bytes_atomic(checksum_path(path), f"{sha256}  {path.name}\n".encode())


def read_checksum(path: str | Path) -> str | None:
    """The sha256 recorded beside `path`, or None when there is none; BadInputError when unreadable."""
    side = checksum_path(path)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"checkpoint {path}: its checksum file {side.name} is unreadable ({exc})"
                            ) from None
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BadInputError(f"checkpoint {path}: its checksum file {side.name} is malformed")
    return digest


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _disk_full(exc: BaseException, folder: Path, need: int) -> bool:
    """Did this write fail for lack of space? ENOSPC / EDQUOT, or torch's own words for a short write
    ("unexpected pos ...", "file write failed") while the folder has less free space than the file."""
    if is_disk_full(exc):
        return True
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return False
    return isinstance(exc, RuntimeError) and free < need


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` (plus format, format_version, library_version) to `path` atomically, and its
    checksum beside it.

    The file appears complete or not at all: it is built under a temporary name in the same folder
    and renamed, so a run killed mid-save leaves the previous checkpoint intact. A full disk is a
    PipelineError "no space left on FOLDER" (the CLI's exit status 2), not torch's own message.
    """
    from unsamflow.pipeline.masks import fmt_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, **state}
    tmp = temp_path(path)
    try:
        torch.save(full, tmp)
        sha = file_sha256(tmp)
        checksum_path(path).unlink(missing_ok=True)  # never a checksum describing the file being replaced
        replace_atomic(tmp, path)
        write_checksum(path, sha)
        return path
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        need = _tensor_bytes(full)
        if _disk_full(exc, path.parent, need):
            raise PipelineError(
                f"no space left on {path.parent} for checkpoint {path.name} (about {fmt_bytes(need)} "
                "needed); the earlier checkpoints are kept: free some space and resume with --resume"
            ) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_checksum(path: str | Path) -> None:
    """BadInputError when `path` differs from the checksum recorded beside it; a one-line notice on
    stderr when it has none (it is then loaded unchecked)."""
    path = Path(path)
    recorded = read_checksum(path)
    if recorded is None:
        print(f"note: checkpoint {path} has no checksum file {checksum_path(path).name} (written before "
              "unsamflow recorded them, or elsewhere): loading it unchecked", file=sys.stderr)
        return
    now = file_sha256(path)
    if now != recorded:
        raise BadInputError(
            f"checkpoint {path} is corrupt: its sha256 {now[:12]}... differs from the one recorded when it "
            f"was written ({recorded[:12]}..., {checksum_path(path).name}); use an earlier checkpoint")


def read_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The contents of a torch file, checked against its checksum (weights_only: no code runs).

    Raises BadInputError naming the file when it is missing, differs from its checksum or is not a
    torch file. Any format: load_checkpoint checks that it is ours; trainer.convert reads the reference's.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise BadInputError(f"checkpoint {path} {what}")
    check_checksum(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for junk: UnpicklingError, RuntimeError, struct.error
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(
            f"checkpoint {path} cannot be read as a safe (weights-only) torch file: {first[:200]}"
        ) from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (weights_only: no code runs while loading).

    Raises BadInputError naming the file when it is missing, differs from its checksum, is not a torch
    file, is foreign (no unsamflow format tag) or of another format version.
    """
    return unsamflow_state(path, read_torch_file(path, map_location))


def unsamflow_state(path: str | Path, state: Any) -> dict[str, Any]:
    """`state` (read from `path`) if it is an unsamflow checkpoint of this version; else BadInputError."""
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
    from unsamflow.trainer.convert import is_reference_checkpoint, reference_model
    from unsamflow.trainer.model import PWCLite

    raw = read_torch_file(path, map_location)
    if is_reference_checkpoint(raw):  # the reference's / ARFlow's format: converted on load
        return reference_model(path, raw, map_location)
    state = unsamflow_state(path, raw)
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
