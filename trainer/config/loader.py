"""Presets (YAML files with `base:` inheritance), command-line overrides and dict round trips.

A preset file is a partial config plus `base: NAME` (a preset name, or a path relative to the file) and a
one-line `description`. Merging is deep: mappings merge key by key, other values replace. A list can be
patched element-wise with a mapping of indices (``stages: {2: {w_hg: 0.1}}``), so a child preset says
only what it changes. Overrides (`key.sub=value`, value read as YAML) are applied to the full resolved
config, so any key - including one the preset never wrote - can be set, and list elements are addressed
by index (`stages.1.w_ar=0.05`). The result is validated once, with key paths in every error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from unsamflow.trainer.config.fields import ConfigError, build, show
from unsamflow.trainer.config.schema import CONFIG_VERSION, TrainConfig

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description, sorted by name."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        out[path.stem] = str(_read_yaml(path).get("description", ""))
    return out


def load_config(preset: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A validated config from a preset name or a YAML file path, then `key.sub=value` overrides."""
    path = _preset_path(preset, None)
    raw = _resolve(path, ())
    raw["name"] = path.stem  # a config records where it came from
    cfg = build(TrainConfig, raw)
    if not overrides:
        return cfg
    full = config_to_dict(cfg)
    for item in overrides:
        apply_override(full, item)
    out = build(TrainConfig, full)
    _check_validation_data(cfg, out, overrides)
    return out


def _check_validation_data(preset: TrainConfig, cfg: TrainConfig, overrides: Sequence[str]) -> None:
    """Refuse a preset's data.val_dataset kept silently when the overrides moved training to other data:
    cpu-demo trained on Sintel kept validating on `synthetic` and logged its EPE under that name."""
    keys = [parse_override(item)[0] for item in overrides]
    moved = any(k[:2] == ["data", "dataset"] for k in keys)
    chose = any(k[:2] == ["data", "val_dataset"] for k in keys)
    val = cfg.data.val_dataset
    if not moved or chose or val is None or val != preset.data.val_dataset:
        return
    from unsamflow.trainer.data.mixes import parse_mix, parse_phases  # lazy: brings torch

    trained = {p.layout for phase in parse_phases(cfg.data.dataset) for p in phase.parts}
    if not {p.layout for p in parse_mix(val)} & trained:
        raise ConfigError("data.val_dataset", f"the preset validates on {val!r} but the overrides train on "
                          f"{cfg.data.dataset!r}; set data.val_dataset=NAME (one of the data you train on, "
                          "or any set with ground truth) or data.val_dataset=null")  # fmt: skip


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as JSON types (tuples become lists); config_from_dict reads it back."""
    return _plain(dataclasses.asdict(cfg))


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A validated config from a dict (e.g. a checkpoint's); another config_version fails clearly."""
    if not isinstance(data, Mapping):
        raise ConfigError("", f"a config must be a mapping, got {type(data).__name__}")
    version = data.get("config_version")
    if version != CONFIG_VERSION:
        raise ConfigError(
            "config_version",
            f"this config has version {show(version)}; this unsamflow reads version {CONFIG_VERSION}",
        )
    return build(TrainConfig, dict(data))


def parse_override(item: str) -> tuple[list[str], Any]:
    """'stages.1.w_ar=0.05' -> (['stages', '1', 'w_ar'], 0.05); the value is read as YAML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("", f"override {item!r}: expected key.sub=value, e.g. optim.lr=2e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"override value {text!r} is not valid YAML: {exc}") from None
    return key.split("."), value


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one `key.sub=value` in a nested dict/list in place (unknown keys are caught by validation)."""
    parts, value = parse_override(item)
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(here, f"no such element; {'.'.join(parts[:depth])} has indices "
                                        f"0..{len(node) - 1}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
            if not last and node.get(index) is None:
                node[index] = {}  # a new mapping (data.masks.sintel=...); validation reports unknown keys
        else:
            where = ".".join(parts[:depth])
            raise ConfigError(where, f"is a value ({show(node)}), not a section: cannot set {here}")
        if last:
            node[index] = value
        else:
            node = node[index]


# --- preset files ---


def _preset_path(ref: str | Path, relative_to: Path | None) -> Path:
    text = str(ref)
    if isinstance(ref, Path) or text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to.parent / path
        if not path.is_file():
            raise ConfigError("", f"config file {path} does not exist")
        return path
    path = PRESETS_DIR / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError("", f"unknown preset {text!r}; known presets: {', '.join(list_presets())}")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"config file {path}: must be a mapping of keys to values")
    return data


def _resolve(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The file's mapping merged over its base chain."""
    path = path.resolve()
    if path in chain:
        names = " -> ".join(p.stem for p in (*chain, path))
        raise ConfigError("base", f"preset inheritance has a cycle: {names}")
    data = _read_yaml(path)
    base_ref = data.pop("base", None)
    if base_ref is None:
        return data
    if not isinstance(base_ref, str) or not base_ref:
        raise ConfigError("base", f"in {path}: must be a preset name or file path, got {show(base_ref)}")
    try:
        base_path = _preset_path(base_ref, path)
    except ConfigError as exc:
        raise ConfigError("base", f"in {path}: {exc}") from None
    return _merge(_resolve(base_path, (*chain, path)), data, "")


def _merge(base: Any, child: Any, path: str) -> Any:
    """Deep merge: mappings key by key; a list under a mapping of indices, element by element."""
    if isinstance(base, dict) and isinstance(child, dict):
        out = dict(base)
        for key, value in child.items():
            out[key] = _merge(base[key], value, f"{path}.{key}".lstrip(".")) if key in base else value
        return out
    if isinstance(base, list) and isinstance(child, dict):
        out_list = list(base)
        for key, value in child.items():
            if not isinstance(key, int) or not 0 <= key < len(base):
                raise ConfigError(f"{path}.{key}", f"no such element to patch; the base has indices "
                                                   f"0..{len(base) - 1}")
            out_list[key] = _merge(base[key], value, f"{path}.{key}")
        return out_list
    return child


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
