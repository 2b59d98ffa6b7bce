"""Checkpoints of the reference implementation (facebookresearch/UnSAMFlow) and of ARFlow, in and out.

The reference saves ``{'epoch', 'iter', 'state_dict', 'optimizer_dict', 'scheduler_dict', 'best_error'}``
(keys of a DataParallel/DDP model prefixed ``module.``). Its PWC-Lite and ours hold the same tensors
one-to-one under other names (76 tensors with +mf, 64 without; every shape equal, no buffers), so a
conversion is a renaming: ``PREFIXES``. With the parity fixes of the network (LeakyReLU on the
upsampler's logits, border-padded decoder warps, region max floored at 0) the converted network gives
the reference's outputs to float32 rounding (tests/test_parity.py checks it on the reference's own golden
outputs).

ARFlow's PWC-Lite (the base of SemARFlow and UnSAMFlow) names its pyramid, estimator and 1x1 convs like
the reference and keeps the context network as one ``convs`` sequence of 7 layers (ours: 4 + a 3-layer
flow head): those keys map. It has no learned upsampler (its output is bilinear x4), so ARFlow and
SemARFlow checkpoints lack ``output_flow_upsampler.*``: they load only with ``allow_missing``, which
leaves our upsampler at its initial weights (state this when you use such a model: its full-resolution
output is not ARFlow's). SemARFlow's semantic inputs (extra pyramid channels) do not map at all.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from unsamflow.pipeline.errors import BadInputError

# (reference prefix, unsamflow prefix): the state-dict names of the two PWC-Lites.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("feature_pyramid_extractor.convs.", "pyramid.levels."),
    ("flow_estimators.", "estimator."),
    ("context_networks.convs.", "context.body."),
    ("context_networks.flow_head.", "context.flow_head."),
    ("output_flow_upsampler.convs.", "upsampler.mask."),
    ("conv_1x1_mask.", "mask_features.project."),
    ("mask_aggregation.", "mask_features.aggregate."),
    ("conv_1x1.", "conv_1x1."),
)
# ARFlow's context network: one sequence whose layers 4..6 are our flow head.
_ARFLOW_CONTEXT = re.compile(r"^context_networks\.convs\.(\d+)\.(.*)$")
_ARFLOW_HEAD_FIRST = 4

REFERENCE_KEYS = ("epoch", "iter", "state_dict", "optimizer_dict", "scheduler_dict", "best_error")


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the ``module.`` prefix of DataParallel / DDP models, if every key has it."""
    keys = list(sd)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for src, dst in table:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def reference_state_dict_to_ours(sd: Mapping[str, Any], *, source: str = "checkpoint") -> dict[str, Any]:
    """A reference (or ARFlow) PWC-Lite state dict under unsamflow's names.

    ARFlow's 7-layer context sequence is split into our body (0..3) and flow head (4..6) when the
    reference's ``context_networks.flow_head`` is absent. Keys that map to nothing are refused, named.
    """
    sd = _strip_module(sd)
    arflow_context = not any(k.startswith("context_networks.flow_head.") for k in sd)
    out: dict[str, Any] = {}
    unmapped = []
    for key, value in sd.items():
        m = _ARFLOW_CONTEXT.match(key) if arflow_context else None
        if m and int(m.group(1)) >= _ARFLOW_HEAD_FIRST:
            new = f"context.flow_head.{int(m.group(1)) - _ARFLOW_HEAD_FIRST}.{m.group(2)}"
        else:
            new = _rename(key, PREFIXES)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        shown = ", ".join(unmapped[:6]) + (f" and {len(unmapped) - 6} more" if len(unmapped) > 6 else "")
        raise BadInputError(
            f"{source}: {len(unmapped)} weights have no counterpart in unsamflow's PWC-Lite ({shown}); "
            "only PWC-Lite checkpoints of UnSAMFlow / ARFlow (without adjacency-map or boundary inputs) map"
        )
    return out


def our_state_dict_to_reference(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Our PWC-Lite state dict under the reference's names (the inverse of the mapping above)."""
    inverse = tuple((dst, src) for src, dst in PREFIXES)
    out = {}
    for key, value in sd.items():
        new = _rename(key, inverse)
        if new is None:
            raise BadInputError(f"weight {key!r} has no counterpart in the reference's PWC-Lite")
        out[new] = value
    return out


def is_reference_checkpoint(state: Any) -> bool:
    """A reference-format (or ARFlow) checkpoint: a dict with a PWC-Lite ``state_dict``, no unsamflow tag."""
    if not isinstance(state, dict) or "format" in state:
        return False
    sd = state.get("state_dict")
    if not isinstance(sd, Mapping) or not sd:
        return False
    keys = _strip_module(sd)
    return any(k.startswith("feature_pyramid_extractor.") for k in keys)


def model_args_from_reference(sd: Mapping[str, Any]) -> dict[str, Any]:
    """PWCLite's constructor arguments that a reference state dict implies (mask features or not)."""
    keys = _strip_module(sd)
    levels = {k.split(".")[1] for k in keys if k.startswith("conv_1x1.")}
    return {"mask_features": any(k.startswith("conv_1x1_mask.") for k in keys), "search_range": 4,
            "num_levels": len(levels) or 5}  # fmt: skip


def load_reference_model(
    path: str | Path, state: dict[str, Any] | None = None, *, allow_missing: bool = False,
    map_location: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(our PWCLite holding the reference checkpoint's weights, model_args). Errors name the file."""
    from unsamflow.trainer.engine.checkpoint import read_torch_file
    from unsamflow.trainer.model import PWCLite

    path = Path(path)
    if state is None:
        state = read_torch_file(path, map_location)
    if not is_reference_checkpoint(state):
        raise BadInputError(
            f"checkpoint {path} is neither an unsamflow checkpoint nor a reference/ARFlow one (a dict with "
            "a PWC-Lite 'state_dict')"
        )
    sd = reference_state_dict_to_ours(state["state_dict"], source=f"checkpoint {path}")
    args = model_args_from_reference(state["state_dict"])
    model = PWCLite(**args)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shapes differ: another configuration of the network
        raise BadInputError(f"checkpoint {path}: weights do not fit PWC-Lite: {str(exc)[:300]}") from exc
    if result.unexpected_keys:
        raise BadInputError(f"checkpoint {path}: unexpected weights {', '.join(result.unexpected_keys[:6])}")
    if result.missing_keys and not allow_missing:
        names = sorted({k.rsplit(".", 2)[0] for k in result.missing_keys})
        hint = (" (ARFlow/SemARFlow have no learned upsampler: convert it first with `python -m "
                "unsamflow.trainer convert --from reference --allow-missing CKPT --out OUT.pt`, which keeps "
                "ours at its initial weights)") if any(n.startswith("upsampler") for n in names) else ""
        raise BadInputError(f"checkpoint {path} lacks weights for {', '.join(names)}{hint}")
    return model.to(map_location).eval(), args


def reference_model(
    path: str | Path, state: dict[str, Any], map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(our network, the assumed preset's config) of a reference/ARFlow checkpoint `state` read from `path`.

    Prints one line saying that it was converted (and which preset's config is assumed)."""
    from unsamflow.trainer.config import config_to_dict, load_config

    model, args = load_reference_model(path, state, map_location=map_location)
    preset = default_preset(args)
    print(reference_notice(path, args, preset), file=sys.stderr, flush=True)
    return model, config_to_dict(load_config(preset=preset))


def load_weights_any(path: str | Path) -> dict[str, torch.Tensor]:
    """Network weights, in our names, of an unsamflow or a reference/ARFlow checkpoint (model.init_from)."""
    from unsamflow.trainer.engine.checkpoint import read_torch_file, unsamflow_state

    state = read_torch_file(path)
    if not is_reference_checkpoint(state):
        return dict(unsamflow_state(path, state)["model"])
    print(f"note: {path} is a reference (UnSAMFlow/ARFlow) checkpoint: its weights were renamed to ours",
          file=sys.stderr, flush=True)
    return reference_state_dict_to_ours(state["state_dict"], source=f"checkpoint {path}")


def reference_notice(path: str | Path, args: dict[str, Any], preset: str) -> str:
    """The one-line notice printed when a reference checkpoint is used directly."""
    mf = "with" if args["mask_features"] else "without"
    return (f"note: {path} is a reference (UnSAMFlow/ARFlow) checkpoint: converted on load ({mf} mask "
            f"features; config of preset {preset} assumed; `unsamflow-trainer convert` writes it once)")


def default_preset(args: dict[str, Any]) -> str:
    """The preset whose network a reference checkpoint of these model_args has."""
    return "kitti-aug-hg-mf" if args["mask_features"] else "kitti-base"


def to_unsamflow_checkpoint(src: str | Path, out: str | Path, preset: str | None = None,
                            allow_missing: bool = False) -> Path:
    """A reference/ARFlow checkpoint as an unsamflow checkpoint (weights, model_args, the preset's config)."""
    from unsamflow.trainer.config import config_to_dict, load_config
    from unsamflow.trainer.engine.checkpoint import read_torch_file, save_checkpoint

    src = Path(src)
    state = read_torch_file(src)
    model, args = load_reference_model(src, state, allow_missing=allow_missing)
    preset = preset or default_preset(args)
    cfg = load_config(preset=preset)
    if bool(cfg.model.mask_features) != args["mask_features"]:
        raise BadInputError(
            f"--preset {preset} has model.mask_features={cfg.model.mask_features} but {src} "
            f"{'has' if args['mask_features'] else 'lacks'} the mask feature module's weights"
        )
    if cfg.model.normalize_corr_features:
        raise BadInputError(
            f"--preset {preset} has model.normalize_corr_features=true, which the reference's network (so "
            f"{src}) does not have; choose a preset without it (e.g. {default_preset(args)})"
        )
    meta = {k: state[k] for k in ("epoch", "iter", "best_error") if isinstance(state.get(k), (int, float))}
    return save_checkpoint(out, {
        "config": config_to_dict(cfg), "model_args": args, "model": model.state_dict(),
        "iteration": int(meta.get("iter", 0)), "converted_from": {"path": str(src), "format": "reference",
                                                                  **meta},
    })  # fmt: skip


def to_reference_checkpoint(src: str | Path, out: str | Path) -> Path:
    """An unsamflow checkpoint's network in the reference's format (state_dict; iteration as iter)."""
    from unsamflow.pipeline.atomic import replace_atomic, temp_path
    from unsamflow.trainer.engine.checkpoint import load_checkpoint

    state = load_checkpoint(src)
    if (state.get("model_args") or {}).get("normalize_corr_features"):
        raise BadInputError(
            f"{src}: trained with model.normalize_corr_features=true, which the reference's network does not "
            "have: its weights would load there but give other flows"
        )
    sd = our_state_dict_to_reference(state["model"])
    it = int(state.get("iteration", 0) or 0)
    ref = {"epoch": 0, "iter": it, "state_dict": sd, "optimizer_dict": {}, "scheduler_dict": {},
           "best_error": float("inf")}  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    try:
        torch.save(ref, tmp)
        return replace_atomic(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
