"""Typed, checked dataclass fields: the machinery under schema.py.

A schema class is a frozen dataclass deriving from `Section`. Each field's type hint says what a value
may be (bool, int, float, str, Literal choices, fixed-length or open tuples, `X | None`, nested sections,
tuples of sections); its metadata may add a range check. `Section.__post_init__` converts YAML/JSON
values (lists to tuples, ints to floats, dicts to sections) and checks them, so a section built directly
in Python is validated exactly like one read from a file. Every failure is a ConfigError naming the
key path ("optim.lr", "stages.1.w_ar") and the allowed values.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from unsamflow.pipeline.errors import BadInputError

Check = Callable[[Any], "str | None"]


class ConfigError(BadInputError):
    """A configuration value is unusable; `path` is the dotted key path (empty for the whole config)."""

    def __init__(self, path: str, problem: str, known: tuple[str, ...] = ()):
        self.path = path
        self.problem = problem
        self.known = tuple(known)  # for an unknown key: the keys its section has
        super().__init__(path, problem, self.known)  # all in args, so it pickles

    def __str__(self) -> str:
        problem = self.problem
        if self.known:  # named here, once the full path is known
            section = self.path.rpartition(".")[0] or "the config"
            problem = f"{problem}; known keys of {section}: {', '.join(self.known)}"
        return f"{self.path}: {problem}" if self.path else problem

    def under(self, prefix: str | int) -> ConfigError:
        """The same error one level down: prefix 'optim' turns 'lr' into 'optim.lr'."""
        return ConfigError(join(prefix, self.path), self.problem, self.known)


def join(prefix: str | int, path: str | int) -> str:
    """'optim' + 'lr' -> 'optim.lr'; either part may be empty; list indices are ints."""
    prefix, path = str(prefix), str(path)
    return f"{prefix}.{path}" if prefix and path else prefix or path


def show(value: Any) -> str:
    """A value as it would be written in an override (YAML-ish): 'x', 1.5, [256, 832], null, true."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # -1.0 reads back as the -1 the user wrote
    return repr(value)


# --- range checks (field metadata "check": value -> problem or None) ---


def greater(lo: float) -> Check:
    return lambda v: None if v > lo else f"must be > {lo:g}, got {show(v)}"


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo:g}, got {show(v)}"


def within(lo: float, hi: float, hi_open: bool = False) -> Check:
    """lo <= v <= hi (or < hi)."""
    bracket = ")" if hi_open else "]"

    def check(v: Any) -> str | None:
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"must be in [{lo:g}, {hi:g}{bracket}, got {show(v)}"

    return check


def each(inner: Check) -> Check:
    """Apply a check to every element of a tuple value (None passes)."""

    def check(v: Any) -> str | None:
        for x in v or ():
            problem = inner(x)
            if problem:
                return problem.replace(f"got {show(x)}", f"got {show(v)}")
        return None

    return check


def ordered_pairs(v: Any) -> str | None:
    """(lo, hi[, lo, hi]) ranges with lo <= hi."""
    for i in range(0, len(v or ()) - 1, 2):
        if v[i] > v[i + 1]:
            return f"each (min, max) pair must have min <= max, got {show(v)}"
    return None


def all_of(*checks: Check) -> Check:
    def check(v: Any) -> str | None:
        for c in checks:
            problem = c(v)
            if problem:
                return problem
        return None

    return check


def field(
    default: Any = dataclasses.MISSING,
    *,
    check: Check | None = None,
    factory: Any = None,
    sub_checks: Mapping[str, Check] | None = None,
) -> Any:
    """A dataclass field with an optional range check (runs after type conversion).

    sub_checks: per-key checks for a field whose type is a plain dataclass defined elsewhere (not a
    Section), so that its keys get the same path-naming errors as ours.
    """
    meta: dict[str, Any] = {"check": check} if check else {}
    if sub_checks:
        meta["sub_checks"] = dict(sub_checks)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# --- conversion by type hint ---


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(tp: Any, plural: bool = False) -> str:
    """'an integer', 'one of ...', 'a list of 2 numbers' (plural: 'integers', 'mappings')."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return ("each one of " if plural else "one of ") + ", ".join(show(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a, plural) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0], True)}"
        return f"a list of {len(args)} {describe(args[0], len(args) > 1)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mappings" if plural else "a mapping"
    if origin is dict:
        return f"a mapping of {describe(args[0], True)} to {describe(args[1], True)}"
    singular = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    many = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return (many if plural else singular).get(tp, str(tp))


_YAML_BOOL_WORDS = {True: ("true", "yes", "on", "y"), False: ("false", "no", "off", "n")}


def convert(tp: Any, value: Any, path: str, sub_checks: Mapping[str, Check] | None = None) -> Any:
    """`value` converted to type `tp`, or ConfigError(path, 'must be ..., got ...')."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in args):
            # YAML 1.1 reads off/no/on/yes as booleans: `amp=off` means the string
            words = [a for a in args if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
            value = words[0] if len(words) == 1 else value
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return convert(a, value, path)
                except ConfigError as exc:
                    if exc.path != path:  # a problem inside a nested value: report that one
                        raise
        raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")
    if origin is tuple:
        return _convert_tuple(tp, args, value, path)
    if origin is dict:
        return _convert_dict(tp, args, value, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, path, sub_checks)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "4e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"{path}: unsupported schema type {tp!r}")
    raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")


def _convert_tuple(tp: Any, args: tuple, value: Any, path: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        kinds = (args[0],) * len(value)
    else:
        if len(value) != len(args):
            raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")
        kinds = args
    out = []
    for i, (k, v) in enumerate(zip(kinds, value, strict=True)):
        if dataclasses.is_dataclass(k):
            out.append(convert(k, v, join(path, i)))
            continue
        try:
            out.append(convert(k, v, path))
        except ConfigError:
            raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}") from None
    return tuple(out)


WILDCARD = "*"  # the key a plain string stands for in a mapping of strings


def _convert_dict(tp: Any, args: tuple, value: Any, path: str) -> dict:
    if isinstance(value, str) and args[0] is str:
        value = {WILDCARD: value}  # `data.roots=/data/KITTI`: one value for every key
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be {describe(tp)}, got {show(value)}")
    return {convert(args[0], k, path): convert(args[1], v, join(path, k)) for k, v in value.items()}


def build(cls: type, data: Any, path: str = "", sub_checks: Mapping[str, Check] | None = None) -> Any:
    """A section from a mapping: unknown keys fail naming the known ones; errors carry `path`."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"must be a mapping of keys to values, got {show(data)}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(join(path, str(key)), "unknown key", tuple(known))
    if not issubclass(cls, Section):
        return _build_plain(cls, data, path, sub_checks or {})
    try:
        return cls(**data)
    except ConfigError as exc:
        raise exc.under(path) if path else exc from None


def _build_plain(cls: type, data: Mapping[str, Any], path: str, checks: Mapping[str, Check]) -> Any:
    """A dataclass that validates itself (BadInputError) but knows no key paths: we check first."""
    values = {}
    for key, value in data.items():
        where = join(path, key)
        value = convert(hints(cls)[key], value, where)
        problem = checks[key](value) if key in checks and value is not None else None
        if problem:
            raise ConfigError(where, problem)
        values[key] = value
    try:
        return cls(**values)
    except BadInputError as exc:
        raise ConfigError(path, str(exc)) from None


class Section:
    """Mixin for frozen dataclass sections: converts and checks every field, then `validate()`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            tp = hints(typing.cast(type, type(self)))[f.name]
            value = convert(tp, getattr(self, f.name), f.name, f.metadata.get("sub_checks"))
            check = f.metadata.get("check")
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    raise ConfigError(f.name, problem)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields; raise ConfigError with the path relative to this section."""
