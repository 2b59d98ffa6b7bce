"""Any frame pairs listed in a small file: text, CSV or JSON, paths relative to the list's folder.

    pairs.txt   img1 img2 [flow [occlusion [invalid [valid]]]]   one pair per line, `#` comments
    pairs.csv   a header naming the columns: img1,img2[,flow][,occlusion][,invalid][,valid]
    pairs.json  [{"img1": ..., "img2": ..., "flow": ...}, ...]   (or {"pairs": [...]})

flow: .flo or KITTI 16-bit PNG; occlusion / invalid / valid: 8-bit mask PNGs (> 127 = occluded /
invalid / valid). The dataset root is the list's folder; `--root LIST_FILE` names both (the option
`list` picks a file inside a root folder; default pairs.txt, pairs.csv or pairs.json there). A frame's
sequence is its folder, so sharding keeps the frames of one folder together.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.layouts.base import Layout, ScanResult
from unsamflow.pipeline.manifest import Frame, Pair, check_relative

COLUMNS = ("img1", "img2", "flow", "occlusion", "invalid", "valid")
_SYNONYMS = {"image1": "img1", "frame1": "img1", "image2": "img2", "frame2": "img2", "gt": "flow",
             "occ": "occlusion"}  # fmt: skip
DEFAULT_LISTS = ("pairs.txt", "pairs.csv", "pairs.json")


def read_list(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(where, {column: path}) per listed pair; `where` names the line or entry for error messages."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BadInputError(f"pair list {path}: cannot read it ({exc.strerror or exc})") from None
    rows: list[tuple[str, dict[str, str]]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"pair list {path}: not valid JSON ({exc})") from None
        entries = data.get("pairs") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise BadInputError(f"pair list {path}: expected a list of pairs (or {{\"pairs\": [...]}})")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise BadInputError(f"pair list {path}: entry {i} must be an object with img1, img2, ...")
            rows.append((f"{path} entry {i}", {_name(k, f'{path} entry {i}'): v for k, v in entry.items()}))
    elif path.suffix.lower() == ".csv":
        reader = csv.reader(text.splitlines())
        header = next(reader, None)
        if header is None:
            raise BadInputError(f"pair list {path} is empty")
        names = [_name(h.strip(), f"{path} header") for h in header]
        for n, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) > len(names):
                raise BadInputError(f"{path} line {n}: {len(row)} columns but the header names {len(names)}")
            rows.append((f"{path} line {n}", {k: v.strip() for k, v in zip(names, row, strict=False)
                                              if v.strip()}))  # fmt: skip
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            cols = line.split("#", 1)[0].split()
            if not cols:
                continue
            if len(cols) > len(COLUMNS):
                raise BadInputError(f"{path} line {n}: {len(cols)} columns; at most {', '.join(COLUMNS)}")
            rows.append((f"{path} line {n}", dict(zip(COLUMNS, cols, strict=False))))
    if not rows:
        raise BadInputError(f"pair list {path} lists no pairs")
    return rows


def _name(column: str, where: str) -> str:
    name = _SYNONYMS.get(column.lower(), column.lower())
    if name not in COLUMNS:
        raise BadInputError(f"{where}: unknown column {column!r}; columns are {', '.join(COLUMNS)}")
    return name


def _scan(root: Path, options: dict[str, Any]) -> ScanResult:
    listed = options["list"]
    if listed:
        path = root / listed
    else:
        path = next((root / n for n in DEFAULT_LISTS if (root / n).is_file()), root / DEFAULT_LISTS[0])
    if not path.is_file():
        raise BadInputError(f"pair list {path} not found; give --root LIST_FILE or put one of "
                            f"{', '.join(DEFAULT_LISTS)} in {root}")  # fmt: skip
    out = ScanResult()
    seen: set[str] = set()
    for where, row in read_list(path):
        missing = [c for c in ("img1", "img2") if not row.get(c)]
        if missing:
            raise BadInputError(f"{where}: no {' or '.join(missing)}")
        for column, rel in row.items():
            if not isinstance(rel, str):
                raise BadInputError(f"{where}: {column} must be a path, got {rel!r}")
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise BadInputError(f"{where}: {column} {rel!r} must be relative to the list's folder {root} "
                                    "(link the data into that folder: symlinks are followed)")  # fmt: skip
            check_relative(rel, where)
            if not (root / rel).is_file():
                raise BadInputError(f"{where}: {column} {rel!r}: file not found ({root / rel})")
        for frame in (row["img1"], row["img2"]):
            if frame not in seen:
                seen.add(frame)
                out.frames.append(Frame(frame, str(Path(row["img1"]).parent)))
        out.pairs.append(Pair(row["img1"], row["img2"], flow=row.get("flow"), occlusion=row.get("occlusion"),
                              invalid=row.get("invalid"), valid=row.get("valid")))  # fmt: skip
    return out


LAYOUT = Layout(
    name="pairs",
    description="frame pairs listed in a .txt/.csv/.json file (img1 img2 [flow occlusion invalid valid]); "
    "--root LIST_FILE",
    scanner=_scan,
    options={"list": ""},
    file_root_option="list",
)
