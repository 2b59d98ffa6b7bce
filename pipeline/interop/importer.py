"""`pipeline import`: masks made elsewhere (amg.py folders, COCO RLE JSON) become verified stores.

Each manifest frame is looked up in the source folder by amg.py's naming (see export: the id without
extension, or failing that its file name without extension); its masks are checked against the frame's
size, derived (full_seg, key objects) and written like segmented ones. The stores record where the
masks came from (`source.imported_from`, segmenter `import`), are indexed, and verified against the
manifest. A frame without masks there, or whose masks do not fit it, is recorded bad with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from unsamflow.pipeline.errors import BadFrameError, BadInputError
from unsamflow.pipeline.interop import FORMATS
from unsamflow.pipeline.interop.amg import METADATA, read_amg_folder
from unsamflow.pipeline.interop.coco import read_coco_json
from unsamflow.pipeline.interop.records import frame_stem
from unsamflow.pipeline.manifest import Manifest

STORE_NAME = "shard-{index:05d}-of-{count:05d}.h5"  # the names `segment` gives its stores


@dataclass
class ImportResult:
    stores: list[Path] = field(default_factory=list)
    frames: int = 0
    masks: int = 0
    bad: dict[str, str] = field(default_factory=dict)
    verify: object = None  # VerifyReport


def source_of(src: Path, frame_id: str, fmt: str) -> Path:
    """Where `frame_id`'s masks are under `src` (BadFrameError naming the places looked at)."""
    stems = dict.fromkeys([frame_stem(frame_id), PurePosixPath(frame_stem(frame_id)).name])
    tried = []
    for stem in stems:
        path = src / stem if fmt == "amg" else src / f"{stem}.json"
        if (path / METADATA).is_file() if fmt == "amg" else path.is_file():
            return path
        tried.append(str(path))
    raise BadFrameError(frame_id, f"no {fmt} masks for it (looked for {' and '.join(tried)})")


def read_records(src: Path, frame_id: str, fmt: str, shape: tuple[int, int]) -> list[dict]:
    if fmt == "youtube-vis":  # one file for the whole set, with tracks (interop.youtube_vis)
        from unsamflow.pipeline.interop.youtube_vis import open_vis

        return open_vis(src).records(frame_id, shape)[0]
    path = source_of(src, frame_id, fmt)
    try:
        return read_amg_folder(path, shape) if fmt == "amg" else read_coco_json(path, shape)
    except BadInputError as exc:
        raise BadFrameError(frame_id, str(exc)) from None


def import_masks(src: Path, fmt: str, manifest_file: Path, out: Path, derive_config: dict,
                 num_shards: int = 1, progress: bool = True) -> ImportResult:
    """Write the stores of `manifest_file`'s frames from `src`, index them and verify them."""
    from tqdm import tqdm
    from unsamflow.pipeline.derive import DeriveConfig, derive
    from unsamflow.pipeline.images import read_rgb
    from unsamflow.pipeline.progress import bar_disable
    from unsamflow.pipeline.segmenters.base import check_records
    from unsamflow.pipeline.shard import shard_manifest
    from unsamflow.pipeline.store import StoreWriter, build_index, store_files
    from unsamflow.pipeline.verify import verify

    if fmt not in FORMATS:
        raise BadInputError(f"unknown import format {fmt!r}; choose from {', '.join(FORMATS)}")
    src = Path(src).resolve()
    if not src.is_dir():
        raise BadInputError(f"--from {src}: not a folder")
    manifest = Manifest.load(manifest_file)
    cfg = DeriveConfig.from_dict(derive_config)
    shards = shard_manifest(manifest, num_shards)
    names = [STORE_NAME.format(index=i, count=len(shards)) for i in range(len(shards))]
    others = [p.name for p in store_files(out) if p.name not in names] if out.is_dir() else []
    if others:
        raise BadInputError(f"{out} holds other stores ({others[0]}, ...): import into an empty folder")
    origin = {"format": fmt, "path": str(src)}
    producer = {"name": "import", "version": 1, "config": origin,
                "spec": {"name": "import", "options": origin}}
    res = ImportResult()
    bar = tqdm(total=len(manifest.frames), desc="import", unit="frame", disable=bar_disable(progress))
    for shard, name in zip(shards, names, strict=True):
        source = {"layout": manifest.layout, "root": manifest.root,
                  "manifest_sha256": shard.meta["manifest_sha256"], "shard_file": None,
                  "imported_from": origin}
        with StoreWriter(out / name, segmenter=producer, derive_config=cfg.to_dict(), source=source,
                         shard=dict(shard.meta)) as writer:
            for frame in shard.frames:
                bar.update(1)
                try:
                    rgb, sha = read_rgb(shard.path(frame.id), frame.id)
                    shape = rgb.shape[:2]
                    del rgb
                    records = read_records(src, frame.id, fmt, shape)
                    check_records(records, shape, f"import from {src}")
                except BadFrameError as exc:
                    writer.add_bad(frame.id, exc.reason)
                    res.bad[frame.id] = exc.reason
                    continue
                except BadInputError as exc:
                    writer.add_bad(frame.id, str(exc))
                    res.bad[frame.id] = str(exc)
                    continue
                masks = np.stack([r["segmentation"] for r in records]) if records \
                    else np.zeros((0, *shape), bool)
                bboxes = np.asarray([r["bbox"] for r in records], np.float64).reshape(-1, 4)
                full_seg, key = derive(masks, bboxes, cfg)
                writer.add_frame(frame.id, image_shape=shape, sha256=sha, records=records,
                                 full_seg=full_seg, key_objects=key)
                res.frames += 1
                res.masks += len(records)
        res.stores.append(out / name)
    bar.close()
    if fmt == "youtube-vis":
        from unsamflow.pipeline.interop.youtube_vis import write_imported_tracks

        write_imported_tracks(src, manifest, res.stores)
    build_index(out, manifest=manifest)
    res.verify = verify(out, manifest, check_hashes=False, progress=progress)
    return res
