"""Segmenter registry: a SegmenterSpec (name + options) in, a ready Segmenter out.

Names resolve in this order:
1. built-ins: `graph` (weight-free default), `sam` (segment-anything, needs a checkpoint), `sam2` (SAM 2,
   extra 'unsamflow[sam2]') and `sam-hq` (HQ-SAM, extra 'unsamflow[sam-hq]');
2. plug-ins registered by installed packages in the entry-point group `unsamflow.segmenters`, e.g. in
   their pyproject.toml: `[project.entry-points."unsamflow.segmenters"] mysam = "mypkg.seg:build"`;
3. `module:factory` strings (`mypkg.seg:build`), imported on the spot.
A factory is called as factory(**spec.options) and must return an object with the Segmenter contract
(see pipeline.segmenters.base). Built-ins are imported lazily, so `graph` never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.segmenters.base import RECORD_KEYS, Segmenter, SegmenterSpec

__all__ = [
    "BUILTIN_SEGMENTERS",
    "DEFAULT_SEGMENTER",
    "ENTRY_POINT_GROUP",
    "RECORD_KEYS",
    "Segmenter",
    "SegmenterSpec",
    "available_segmenters",
    "build_segmenter",
    "check_spec",
    "resolve_factory",
]

DEFAULT_SEGMENTER = "graph"
ENTRY_POINT_GROUP = "unsamflow.segmenters"


# Built-ins as "module:factory", like entry points, so that importing this package stays cheap.
_BUILTINS = {
    "graph": "unsamflow.pipeline.segmenters.graph:GraphSegmenter",
    "sam": "unsamflow.pipeline.segmenters.sam:SamSegmenter",
    # Optional packages ('unsamflow[sam2]', '[sam-hq]'): their modules import them only when used, so
    # listing them (`pipeline segmenters`) works without them and using them fails naming the extra.
    "sam2": "unsamflow.pipeline.segmenters.sam2:Sam2Segmenter",
    "sam-hq": "unsamflow.pipeline.segmenters.sam_hq:SamHqSegmenter",
}


# Records of these are trusted; those of plug-ins and of the wrappers of optional third-party packages
# (sam2, sam-hq: their output format may change with their version) are checked before they are stored.
BUILTIN_SEGMENTERS = frozenset({"graph", "sam"})


def available_segmenters() -> list[str]:
    """Built-in names first, then installed plug-ins (sorted); `module:factory` is always accepted too."""
    plugins = sorted(ep.name for ep in _entry_points() if ep.name not in _BUILTINS)
    return list(_BUILTINS) + plugins


def check_spec(spec: SegmenterSpec) -> Any:
    """Resolve the factory and check the options against its signature, without building anything.

    Cheap, so the client calls it before starting a cluster: a typo fails in a second, not after the
    workers came up. Returns the factory.
    """
    factory = resolve_factory(spec.name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some C callables have no signature: let the call itself complain
        signature = None
    if signature is not None:
        try:
            signature.bind(**spec.options)
        except TypeError as exc:
            accepted = [p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
            raise BadInputError(
                f"segmenter {spec.name!r}: bad options {sorted(spec.options)} ({exc}); it accepts {accepted}"
            ) from None
        _check_option_types(spec, signature)
    checkpoint = spec.options.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise BadInputError(f"segmenter {spec.name!r}: checkpoint not found: {checkpoint}")
    check_options = getattr(factory, "check_options", None)
    if callable(check_options):  # a backend's own cheap checks (e.g. SAM: model type vs checkpoint)
        check_options(**spec.options)
    return factory


# What a value given for a parameter must be, judged by the type of the parameter's default: a string
# where the default is a number would otherwise reach the workers and fail every shard there.
_KINDS: list[tuple[type, tuple[type, ...], str]] = [
    (bool, (bool,), "true or false"),
    (int, (int,), "an integer"),
    (float, (int, float), "a number"),
    (str, (str,), "a string"),
]


def _check_option_types(spec: SegmenterSpec, signature: inspect.Signature) -> None:
    for key, value in spec.options.items():
        param = signature.parameters.get(key)
        if param is None or param.default is inspect.Parameter.empty or param.default is None:
            continue
        default = param.default
        for kind, allowed, words in _KINDS:
            if isinstance(default, kind):
                ok = isinstance(value, allowed) and (kind is bool or not isinstance(value, bool))
                if not ok:
                    raise BadInputError(
                        f"segmenter {spec.name!r}: option {key} must be {words} (its default is "
                        f"{default!r}), got {value!r}"
                    )
                break


def build_segmenter(spec: SegmenterSpec) -> Segmenter:
    """Build the segmenter `spec` names, with its options. Errors name the segmenter and what is wrong."""
    segmenter = check_spec(spec)(**spec.options)
    if not isinstance(segmenter, Segmenter):
        raise BadInputError(
            f"segmenter {spec.name!r}: its factory returned {type(segmenter).__name__}, which lacks the "
            "Segmenter contract (name, version, config(), __call__(image))"
        )
    return segmenter


def resolve_factory(name: str) -> Callable[..., Any]:
    """The factory a segmenter name stands for (built-in, entry point, or module:factory)."""
    if name in _BUILTINS:
        return _import_factory(_BUILTINS[name])
    for ep in _entry_points():
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:
                raise BadInputError(
                    f"segmenter {name!r}: cannot load entry point {ep.value!r} "
                    f"(group {ENTRY_POINT_GROUP}): {exc}"
                ) from None
    if ":" in name:
        return _import_factory(name)
    raise BadInputError(
        f"unknown segmenter {name!r}; available: {', '.join(available_segmenters())} "
        "(or give a 'module:factory' path)"
    )


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"segmenter {path!r}: cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise BadInputError(f"segmenter {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(f"segmenter {path!r}: {attr!r} is not callable")
    return obj


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
