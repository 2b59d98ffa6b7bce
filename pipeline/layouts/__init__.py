"""Dataset layouts: scan a dataset root in a known tree format into a Manifest.

    manifest = scan("sintel", "/data/MPI-Sintel", passes="final")
    problems = check_expected(manifest)   # [] when the counts match data_manifests/sintel.yaml

Each layout lives in its own module and registers one `Layout` in LAYOUTS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts import folder, kitti, middlebury, sintel
from unsamflow.pipeline.layouts.base import Layout, ScanResult, natural_key
from unsamflow.pipeline.layouts.expected import check_expected, expected_for
from unsamflow.pipeline.manifest import Manifest

__all__ = [
    "LAYOUTS",
    "Layout",
    "ScanResult",
    "check_expected",
    "counts",
    "expected_for",
    "get_layout",
    "layout_names",
    "natural_key",
    "register",
    "scan",
]

LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Add a layout to LAYOUTS (a module elsewhere may add its own with one line below)."""
    if layout.name in LAYOUTS and LAYOUTS[layout.name] is not layout:
        raise ValueError(f"layout {layout.name!r} is registered twice")
    LAYOUTS[layout.name] = layout
    return layout


for _layout in (sintel.LAYOUT, kitti.KITTI2015, kitti.KITTI2012, middlebury.LAYOUT, folder.LAYOUT):
    register(_layout)

# --- more layouts: one `register(module.LAYOUT)` line each, with its import ---

from unsamflow.pipeline.layouts import synthetic  # noqa: E402  (synthetic scenes: pipeline.synthetic.dataset)

register(synthetic.LAYOUT)

from unsamflow.pipeline.layouts import flyingchairs, flyingthings3d, hd1k, kitti_raw, pairs  # noqa: E402

register(flyingchairs.LAYOUT)
register(flyingthings3d.LAYOUT)
register(hd1k.LAYOUT)
register(pairs.LAYOUT)
register(kitti_raw.KITTI_RAW)
register(kitti_raw.SINTEL_RAW)

_MAX_IGNORED_EXAMPLES = 20

# ptlflow's dataset names, accepted wherever a layout is: name -> (layout, options it implies).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sintel-clean": ("sintel", {"passes": ["clean"]}),
    "sintel-final": ("sintel", {"passes": ["final"]}),
    "kitti-2015": ("kitti2015", {}),
    "kitti-2012": ("kitti2012", {}),
}


def layout_names() -> list[str]:
    """Every name `scan` accepts: the layouts, ptlflow's short names (ALIASES), then the dataset names
    of every other command (pipeline.flow.datasets.DATASETS), so one name works everywhere."""
    from unsamflow.pipeline.flow.datasets import DATASETS, SHORT_NAMES

    return list(dict.fromkeys([*LAYOUTS, *ALIASES, *DATASETS, *SHORT_NAMES]))


def resolve_alias(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(layout, options) for a layout, alias or dataset name; the options given override the name's own."""
    if name in LAYOUTS:
        return name, options
    if name in ALIASES:
        layout, implied = ALIASES[name]
    else:
        from unsamflow.pipeline.flow.datasets import DATASETS, SHORT_NAMES

        if SHORT_NAMES.get(name, name) not in DATASETS:
            return name, options  # get_layout names the unknown layout
        layout, implied = DATASETS[SHORT_NAMES.get(name, name)]
    return layout, {**implied, **{k: v for k, v in options.items() if v is not None}}


def scan(layout: str, root: str | Path, **options: Any) -> Manifest:
    """Scan `root` as `layout`; options left out (or None) take the layout's defaults.

    meta records the full options, the counts, and any files that were present but not part
    of the layout ("ignored") or selected folders that were missing ("missing_dirs").
    """
    layout, options = resolve_alias(layout, options)
    spec = get_layout(layout)
    root_path = Path(root)
    if spec.file_root_option and root_path.is_file():  # `--root pairs.csv`: its folder is the root
        options = {**options, spec.file_root_option: root_path.name}
        root_path = root_path.parent
    opts = _resolve_options(spec, options)
    if not root_path.is_dir():
        what = "is not a folder" if root_path.exists() else "does not exist"
        raise BadInputError(f"dataset root {root_path} {what}")
    root_path = root_path.resolve()
    found = spec.scanner(root_path, opts)
    if not found.frames:
        where = f" (missing: {', '.join(found.missing_dirs)})" if found.missing_dirs else ""
        raise BadInputError(f"{root_path}: no {spec.name} frames found{where}; {spec.description}")
    _refuse_non_utf8(root_path, found)
    meta: dict[str, Any] = {"options": opts, "counts": counts(found)}
    if found.ignored:
        examples = [_printable(name) for name in found.ignored[:_MAX_IGNORED_EXAMPLES]]
        meta["ignored"] = {"count": len(found.ignored), "examples": examples}
    if found.missing_dirs:
        meta["missing_dirs"] = found.missing_dirs
    return Manifest(spec.name, str(root_path), found.frames, found.pairs, meta)


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise BadInputError(f"unknown layout {name!r}; known layouts: {', '.join(LAYOUTS)}") from None


def counts(found: ScanResult | Manifest) -> dict[str, int]:
    return {
        "frames": len(found.frames),
        "sequences": len({f.sequence for f in found.frames}),
        "pairs": len(found.pairs),
        "pairs_with_gt": sum(p.flow is not None for p in found.pairs),
    }


def _resolve_options(spec: Layout, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with the given options, each coerced to its default's type and checked."""
    opts = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.options.items()}
    for key, value in given.items():
        if value is None:
            continue
        if key not in spec.options:
            known = ", ".join(spec.options) or "none"
            raise BadInputError(f"layout {spec.name!r} has no option {key!r} (its options: {known})")
        default = spec.options[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise BadInputError(
                    f"layout {spec.name!r}: option {key!r} must be true or false, not {value!r}"
                )
        elif isinstance(default, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            value = [str(v).strip() for v in items if str(v).strip()]
            if not value:
                raise BadInputError(f"layout {spec.name!r}: option {key!r} needs at least one value")
            value = list(dict.fromkeys(value))  # drop repeats, keep the user's order
        else:
            value = str(value)
        allowed = spec.choices.get(key)
        bad = [v for v in (value if isinstance(value, list) else [value]) if allowed and v not in allowed]
        if bad:
            raise BadInputError(
                f"layout {spec.name!r}: option {key!r} got {bad[0]!r}; choose from {', '.join(allowed or ())}"
            )
        opts[key] = value
    return opts


def _printable(name: str) -> str:
    """A name as valid UTF-8 text (undecodable bytes as U+FFFD), for notes such as `ignored`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _refuse_non_utf8(root: Path, found: ScanResult) -> None:
    """Refuse frames and ground-truth files whose names are not valid UTF-8, naming them.

    Their ids could not travel to the workers (Dask's messages are UTF-8): a run on them hung.
    """
    names = [f.id for f in found.frames]
    names += [v for p in found.pairs for v in vars(p).values() if isinstance(v, str)]
    bad = [n for n in names if _printable(n) != n]
    if bad:
        shown = ", ".join(repr(os.fsencode(n)) for n in bad[:5])
        raise BadInputError(
            f"{root}: {len(bad)} file name(s) are not valid UTF-8: {shown}; rename them (e.g. `convmv -f "
            "latin1 -t utf8 -r --notest ROOT`) or move them out of the dataset"
        )
