"""Dataset mixes by name, in ptlflow's grammar: `sintel-clean+sintel-final`, `kitti-2015-multiview*2+...`.

Each `+`-separated component is `name[*N]`: `name` is a key of pipeline.flow.datasets.DATASETS or one
of the short ALIASES (`sintel-clean` = `sintel-clean-training`), and `N` (default 1) repeats its pairs
N times in an epoch, to balance a small set against a large one.

A component's dataset root and mask-store directory come from two plain mappings (the `roots:` and
`masks:` sections of a config). The most specific key wins: the component as written (`sintel-clean`),
then its full name (`sintel-clean-training`), then its layout (`sintel`, `kitti2015`, `synthetic`):

    roots: {sintel: /data/Sintel, kitti2015: /data/KITTI2015}
    masks: {sintel-clean: /masks/sintel-clean, sintel-final: /masks/sintel-final, kitti2015: /masks/kitti}

One store directory may hold several components (frame ids differ: `training/clean/...`,
`training/final/...`), so `masks: {sintel: /masks/sintel}` serves both passes when the pipeline ran
over a manifest holding both.

A training run may go through data phases (the reference recipes: raw frames first, then the benchmark
sets): `kitti-raw > 0.5 kitti-2015-multiview+kitti-2012-multiview` trains on the first mix until half
of optim.iterations, then on the second (`parse_phases`; `50%` works too). A phase's start is a fraction
of the run, as a stage's is. (No colon after the start: a command-line override is read as YAML, where
`a: b` is a mapping.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.flow.datasets import SHORT_NAMES, resolve_name

ALIASES: dict[str, str] = SHORT_NAMES  # one table of names for every command (pipeline.flow.datasets)

_COMPONENT = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]*)(?:\*(?P<repeat>\d+))?$")


@dataclass(frozen=True)
class MixPart:
    """One component of a mix: `written` as in the spec, `name` its DATASETS key, `repeat` N."""

    written: str
    name: str
    repeat: int = 1

    @property
    def layout(self) -> str:
        return resolve_name(self.name)[1]

    @property
    def keys(self) -> list[str]:
        """Mapping keys that name this component, most specific first."""
        return list(dict.fromkeys([self.written, self.name, self.layout]))


@dataclass(frozen=True)
class DataPhase:
    """One phase of a training data schedule: the mix `spec`, from `start` (a fraction of the run)."""

    start: float
    spec: str

    @property
    def parts(self) -> list[MixPart]:
        return parse_mix(self.spec)


def parse_phases(spec: str) -> list[DataPhase]:
    """`a > 0.5 b+c` -> [DataPhase(0, 'a'), DataPhase(0.5, 'b+c')]; a plain mix is one phase from 0.

    Every phase after the first begins with its start: a fraction (or N%) of the run in (0, 1), after the
    previous phase's."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadInputError(f"dataset must be a mix like 'sintel-clean+sintel-final' (or phases "
                            f"'a > 0.5 b'), got {spec!r}")  # fmt: skip
    phases: list[DataPhase] = []
    for i, text in enumerate(spec.split(">")):
        start, mix = 0.0, text.strip()
        if i:
            head, _, mix = text.strip().partition(" ")
            head = head.rstrip(":")
            try:
                start = float(head[:-1]) / 100 if head.endswith("%") else float(head)
            except ValueError:
                start = -1.0
            if not 0 < start < 1 or start <= phases[-1].start:
                raise BadInputError(f"data schedule {spec!r}: phase {i} must read 'START MIX' with START a "
                                    f"fraction (or N%) of the run after {phases[-1].start:g} and below 1, "
                                    f"got {text.strip()!r}")  # fmt: skip
        parse_mix(mix)
        phases.append(DataPhase(start, mix.strip()))
    return phases


def parse_mix(spec: str) -> list[MixPart]:
    """`a*2+b` -> [MixPart(a, repeat=2), MixPart(b)]; unknown names and bad repeats fail naming them."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadInputError(f"dataset mix must be a non-empty string like 'sintel-clean+sintel-final', "
                            f"got {spec!r}")
    if ">" in spec:
        raise BadInputError(f"{spec!r} is a data schedule with phases ('>'): here one mix is needed")
    parts = []
    for comp in spec.split("+"):
        comp = comp.strip()
        m = _COMPONENT.match(comp)
        if not m:
            raise BadInputError(f"dataset mix {spec!r}: component {comp!r} is not NAME or NAME*N")
        written = m["name"]
        try:
            name = resolve_name(written)[0]
        except BadInputError as exc:
            raise BadInputError(f"dataset mix {spec!r}: {exc}") from None
        repeat = int(m["repeat"] or 1)
        if repeat < 1:
            raise BadInputError(f"dataset mix {spec!r}: repeat count of {written!r} must be >= 1, "
                                f"got {repeat}")
        parts.append(MixPart(written, name, repeat))
    return parts


def lookup(mapping: Mapping[str, str | Path] | None, part: MixPart, what: str) -> Path | None:
    """The path `mapping` gives for `part` (most specific key first); None when mapping is None or its
    entry is None (`masks: {folder: null}`: that component has no stores).

    what: "roots" or "masks", for the message when no key matches.
    """
    if mapping is None:
        return None
    for key in (*part.keys, "*"):  # "*": the default of every component (`data.roots=/data/KITTI`)
        if key in mapping:
            return None if mapping[key] is None else Path(mapping[key])
    raise BadInputError(f"no {what} entry for dataset {part.written!r}: give one of the keys "
                        f"{part.keys} in {what} (have: {sorted(mapping) or 'none'})")
