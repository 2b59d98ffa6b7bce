"""What the SAM-family backends (`sam`, `sam2`, `sam-hq`) share: optional imports, checked checkpoint
loading, the device choice and the conversion of automatic-mask-generator records, so that every
SAM-style backend fails the same way on the same mistakes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from unsamflow.pipeline.errors import BadInputError

# Bytes per pixel of each mask candidate in flight: float32 logits at full resolution (4), the
# thresholded masks and the stability score's comparisons (bool, 1 + 2), the transposed copy run
# lengths are taken from (1).
BYTES_PER_CANDIDATE_PIXEL = 8


def require(module: str, backend: str, extra: str) -> ModuleType:
    """Import an optional package, or fail in one line that names the extra which installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BadInputError(
            f"segmenter {backend!r} needs the {module!r} package ({exc}); "
            f"install it with: pip install 'unsamflow[{extra}]'"
        ) from None


def load_checked_state_dict(
    path: str | Path,
    backend: str,
    model_type: str,
    expected: Callable[[str], dict[str, tuple[int, ...]]],
    model_types: Iterable[str],
    mmap: bool = False,
    nested_key: str | None = None,
    optional_prefixes: tuple[str, ...] = (),
    describe: Callable[[dict[str, tuple[int, ...]]], str] | None = None,
    list_keys: bool = True,
) -> dict[str, torch.Tensor]:
    """Load a checkpoint with torch.load(weights_only=True) and check its keys and shapes.

    expected(model_type) gives the parameter shapes of a model type; on a mismatch the error says which
    of `model_types` the file does fit. nested_key: the checkpoint may hold the state_dict under this key
    (SAM 2's files are {"model": state_dict}). optional_prefixes: keys the model has but a release may
    leave out because segmentation never uses them (they keep their initial values). describe(shapes):
    what a mismatching file is, instead of trying every one of `model_types`. list_keys: name a few keys
    of a file that is not a state_dict (`sam`'s message predates this and names only the type).
    """
    path = Path(path)
    types = list(model_types)
    if model_type not in types:
        raise BadInputError(f"{backend}: unknown model_type {model_type!r}; choose one of {', '.join(types)}")
    if not path.is_file():
        raise BadInputError(f"{backend} checkpoint not found: {path}")
    try:
        try:  # mapped, not read: checking a multi-GB checkpoint on the client costs no memory
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # torch raises pickle, zip and runtime errors for foreign files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInputError(
            f"{backend} checkpoint {path}: not loadable as a {model_type} checkpoint with "
            f"torch.load(weights_only=True): {msg}"
        ) from None
    if nested_key is not None and isinstance(state, dict) and isinstance(state.get(nested_key), dict):
        state = state[nested_key]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        where = f" (or {{{nested_key!r}: state_dict}})" if nested_key else ""
        keys = f" with keys {_some_keys(state)}" if list_keys else ""
        raise BadInputError(
            f"{backend} checkpoint {path}: not a {model_type} checkpoint (expected a state_dict{where}, a "
            f"non-empty dict of tensors; got {type(state).__name__}{keys})"
        )
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    problem = mismatch(shapes, expected(model_type), optional_prefixes)
    if problem:
        if describe is not None:
            hint = describe(shapes)
        else:
            others = [t for t in types if t != model_type]
            fits = [t for t in others if not mismatch(shapes, expected(t), optional_prefixes)]
            hint = f"it is a {fits[0]} checkpoint" if fits else f"it matches none of {', '.join(types)}"
        raise BadInputError(f"{backend} checkpoint {path}: not a {model_type} checkpoint ({problem}); {hint}")
    return state


def mismatch(
    got: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]], optional_prefixes: tuple[str, ...] = ()
) -> str:
    """'' when the key sets and shapes agree, else a short description of the first differences."""
    missing = sorted(k for k in set(want) - set(got) if not k.startswith(optional_prefixes or ("\0",)))
    unexpected = sorted(set(got) - set(want))
    wrong = [k for k in want if k in got and got[k] != want[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} keys with other shapes, e.g. {k!r} is {got[k]}, expected {want[k]}")
    return "; ".join(parts)


class _ShapesOnly(TorchFunctionMode):
    """Hiera and TinyViT compute drop-path rates with torch.linspace(...).item(), which a meta tensor
    cannot answer: keep that one call on the CPU while the rest of a model is built on the meta device.
    SAM 2 puts tensors on "cuda" whenever CUDA is available (its RoPE table by .to("cuda"), which a meta
    tensor cannot do: seen on an H200; position encodings with device="cuda"): for shapes, those stay on
    the meta device too, so the shapes read the same with and without a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        elif kwargs.get("device") is not None and torch.device(kwargs["device"]).type == "cuda":
            kwargs["device"] = "meta"
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **kwargs)


def shapes_of(build: Callable[[], torch.nn.Module]) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer shapes of the model `build` makes, built on the meta device (no memory)."""
    with torch.device("meta"), _ShapesOnly():
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def resolve_device(device: str, backend: str) -> torch.device:
    """"auto": the device the cluster gave this worker ($UNSAMFLOW_DEVICE), else cuda when available."""
    if device == "auto":
        device = os.environ.get("UNSAMFLOW_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise BadInputError(f"{backend}: bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(
            f"{backend}: device {device!r} requested but CUDA is not available on this machine"
        )
    return dev


def check_point_counts(backend: str, points_per_side: int, points_per_batch: int) -> None:
    """The generators' point grid and batch must be positive; refused before any model is built."""
    if points_per_side < 1 or points_per_batch < 1:
        raise BadInputError(
            f"{backend}: points_per_side and points_per_batch must be >= 1, got {points_per_side}, "
            f"{points_per_batch}"
        )


def check_image(image: np.ndarray, backend: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInputError(
            f"{backend} segmenter: expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}"
        )


def compact_records(raw: list[dict[str, Any]], round_boxes: bool = True) -> list[dict[str, Any]]:
    """Generator records ("uncompressed_rle" mode) in the contract's plain types; empty masks dropped.

    round_boxes: round "bbox" and "crop_box" to the nearest integer; False truncates them with int(), as
    `sam` always has (segment-anything's boxes are integers already, so both give the same).
    """
    box = (lambda v: int(round(float(v)))) if round_boxes else int
    return [
        {
            "segmentation": {"size": [int(v) for v in r["segmentation"]["size"]],
                             "counts": r["segmentation"]["counts"]},
            "area": int(r["area"]),
            "bbox": [box(v) for v in r["bbox"]],
            "predicted_iou": float(r["predicted_iou"]),
            "stability_score": float(r["stability_score"]),
            "point_coords": [[float(v) for v in p] for p in r["point_coords"]],
            "crop_box": [box(v) for v in r["crop_box"]],
        }
        for r in raw
        if int(r["area"]) > 0
    ]


def decode_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run-length masks -> bool (H, W) arrays, for callers of the plain Segmenter contract."""
    from unsamflow.pipeline.masks import rle_decode

    for r in records:
        r["segmentation"] = np.ascontiguousarray(rle_decode(r["segmentation"]))
    return records


def peak_candidate_bytes(device: torch.device, candidates: int, shape: tuple[int, int]) -> int:
    """Host memory of the generator's full-resolution batch; 0 on a GPU, where CUDA's own out-of-memory
    error bounds it and the segment stage records such a frame as bad."""
    if device.type != "cpu":
        return 0
    return BYTES_PER_CANDIDATE_PIXEL * candidates * int(shape[0]) * int(shape[1])


def _some_keys(state: Any) -> list[str]:
    return sorted(str(k) for k in state)[:5] if isinstance(state, dict) else []
