"""Frame lists ("manifests"): which frames of a dataset root to process, in which sequences.

A manifest is a JSON file. Frame ids are paths relative to the dataset root (POSIX
separators); the same ids key the mask stores and the flow datasets. Shards are manifests
too (a subset of frames with `meta["shard"]`), so one format serves every stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from unsamflow.pipeline.atomic import write_bytes_atomic
from unsamflow.pipeline.errors import BadInputError

FORMAT = "unsamflow-manifest"
VERSION = 1


@dataclass(frozen=True)
class Frame:
    id: str  # relative path under the root, e.g. "training/clean/alley_1/frame_0001.png"
    sequence: str  # frames of one sequence stay together when sharding


@dataclass(frozen=True)
class Pair:
    """Two frames of one sequence and, where the dataset has them, ground-truth files."""

    frame1: str
    frame2: str
    flow: str | None = None  # .flo or KITTI 16-bit PNG, relative to the root
    occlusion: str | None = None  # Sintel occlusions/ (255 = occluded)
    invalid: str | None = None  # Sintel invalid/ (255 = invalid)
    occ_kind: str | None = None  # "flow_occ" / "flow_noc" for KITTI, None otherwise
    valid: str | None = None  # a valid-pixel mask PNG (255 = valid), e.g. from a `pairs` list


@dataclass
class Manifest:
    layout: str
    root: str
    frames: list[Frame]
    pairs: list[Pair] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    # -- paths ---------------------------------------------------------------
    def path(self, frame_id: str) -> Path:
        """Absolute path of a frame; refuses ids that escape the root."""
        return safe_join(self.root, frame_id)

    @property
    def frame_ids(self) -> list[str]:
        return [f.id for f in self.frames]

    def sequences(self) -> dict[str, list[Frame]]:
        out: dict[str, list[Frame]] = {}
        for f in self.frames:
            out.setdefault(f.sequence, []).append(f)
        return out

    # -- files ---------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "layout": self.layout,
            "root": self.root,
            "meta": self.meta,
            # vars(), not dataclasses.asdict: asdict dominates the cost on manifests of 10^5 frames.
            "frames": [dict(vars(f)) for f in self.frames],
            "pairs": [{k: v for k, v in vars(p).items() if v is not None} for p in self.pairs],
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary name, then rename)."""
        return write_bytes_atomic(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def from_dict(cls, data: dict, source: str = "<manifest>") -> Manifest:
        if data.get("format") != FORMAT:
            raise BadInputError(f"{source}: not an unsamflow manifest (format={data.get('format')!r})")
        if data.get("version") != VERSION:
            raise BadInputError(f"{source}: manifest version {data.get('version')} is not {VERSION}")
        try:
            frames = [Frame(**f) for f in data["frames"]]
            pairs = [Pair(**p) for p in data.get("pairs", [])]
            m = cls(data["layout"], data["root"], frames, pairs, data.get("meta", {}))
        except (KeyError, TypeError) as exc:
            raise BadInputError(f"{source}: malformed manifest ({exc})") from None
        _check_types(m, source)
        for f in m.frames:
            check_relative(f.id, source)
        return m

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInputError(f"manifest not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def _check_types(m: Manifest, source: str) -> None:
    """Every field its type, so that a hand-edited `"id": 5` is named here, not a traceback later."""
    for name in ("layout", "root"):
        if not isinstance(getattr(m, name), str):
            raise BadInputError(f"{source}: {name} must be a string, got {getattr(m, name)!r}")
    if not isinstance(m.meta, dict):
        raise BadInputError(f"{source}: meta must be an object, got {type(m.meta).__name__}")
    check_utf8(m.root, f"{source}: root")
    for i, f in enumerate(m.frames):
        for name in ("id", "sequence"):
            value = getattr(f, name)
            if not isinstance(value, str):
                raise BadInputError(f"{source}: frames[{i}].{name} must be a string, got {value!r}")
    for i, p in enumerate(m.pairs):
        for name, value in vars(p).items():
            if not (isinstance(value, str) or (value is None and name not in ("frame1", "frame2"))):
                raise BadInputError(f"{source}: pairs[{i}].{name} must be a string, got {value!r}")
            if value is not None:
                check_utf8(value, f"{source}: pairs[{i}].{name}")


def check_utf8(name: str, what: str = "file name") -> str:
    """Refuse a name that is not valid UTF-8 (Python carries its bytes as lone surrogates).

    Such a name cannot cross Dask's wire format, an HDF5 string or JSON without loss: before this
    check it killed the worker's connection and `run` waited forever.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        raise BadInputError(
            f"{what} {raw!r} is not valid UTF-8; rename it (e.g. `convmv -f latin1 -t utf8`) or leave it "
            "out of the dataset"
        ) from None
    return name


def check_relative(frame_id: str, source: str = "manifest") -> str:
    """Refuse ids that are absolute, climb out of the root with '..', or are not valid UTF-8."""
    if not isinstance(frame_id, str):
        raise BadInputError(f"{source}: frame id must be a string, got {frame_id!r}")
    check_utf8(frame_id, f"{source}: frame id")
    p = PurePosixPath(frame_id)
    if not frame_id or p.is_absolute() or ".." in p.parts or "\\" in frame_id:
        raise BadInputError(f"{source}: frame id {frame_id!r} escapes the dataset root")
    return frame_id


def safe_join(root: str | Path, frame_id: str) -> Path:
    """root / frame_id, refusing ids that climb out of the root (absolute, '..', see check_relative).

    The check is on the id, not on where the file lies: a symlink inside the root is followed wherever
    it resolves (datasets linked in from another disk), while a manifest can still never name a path
    outside the root."""
    check_relative(frame_id)
    return Path(root).resolve() / frame_id
