"""`model.init_from`: a new run starts from another run's network weights (fine-tuning), nothing else.

Only the weights are taken: optimiser, schedule, iteration, data position and RNG states start fresh, as
the new run's config says. Matching is strict by default: every weight of the network must be in the
file under the same name and shape, and the file must hold nothing else, and a mismatch is one error
listing the missing and unexpected names (`model.init_strict=false` loads the weights that match and
logs the rest). Checked in `prepare`, before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from unsamflow.pipeline.errors import BadInputError

_MAX_LISTED = 20


def load_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The network weights of a checkpoint (a run folder: its latest) in our names: an unsamflow checkpoint,
    or the reference's / ARFlow's format renamed (trainer.convert.load_weights_any)."""
    from unsamflow.trainer.convert import load_weights_any
    from unsamflow.trainer.evaluation.checkpoints import find_checkpoint

    return load_weights_any(find_checkpoint(path))


def match_weights(model: torch.nn.Module, weights: dict[str, Any], strict: bool,
                  source: str) -> tuple[list[str], list[str]]:  # fmt: skip
    """(missing, unexpected) names of `weights` against `model`; raises BadInputError listing them when
    strict, and always for a weight whose shape differs (that is another network, not a partial one)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {list(weights[k].shape)} (network: {list(v.shape)})" for k, v in own.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]  # fmt: skip
    if shapes:
        raise BadInputError(f"model.init_from: {source}: {len(shapes)} weight(s) have another shape: "
                            f"{_names(shapes)} (another model configuration?)")  # fmt: skip
    if strict and (missing or unexpected):
        parts = [f"missing {len(missing)}: {_names(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {_names(unexpected)}" if unexpected else ""]  # fmt: skip
        raise BadInputError(f"model.init_from: {source} does not fit the network ("
                            f"{'; '.join(p for p in parts if p)}); model.init_strict=false loads the weights "
                            "that match and leaves the rest at their initial values")  # fmt: skip
    return missing, unexpected


def describe(source: str, weights: dict[str, Any], missing: list[str], unexpected: list[str]) -> str:
    """The log line of an initialisation."""
    line = f"initialised the network from {source} ({len(weights) - len(unexpected)} weights)"
    if missing:
        line += f"; left at initial values (missing): {_names(missing)}"
    if unexpected:
        line += f"; ignored (unexpected): {_names(unexpected)}"
    return line


def _names(names: list[str]) -> str:
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" (+{more} more)" if more > 0 else "")
