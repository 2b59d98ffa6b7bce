"""verify() against a manifest, and the derive / index / verify commands, on real frames."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.derive import DeriveConfig, derive
from unsamflow.pipeline.images import read_rgb
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segmenters import build_segmenter
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import MaskStore, StoreWriter
from unsamflow.pipeline.store.index import INDEX_NAME, Index
from unsamflow.pipeline.store.integrity import write_sidecar
from unsamflow.pipeline.verify import verify

IDS = ["judo/00000.jpg", "judo/00001.jpg", "judo/00002.jpg"]
SEGMENTER = {"name": "graph", "version": "1", "config": {"scales": [100.0, 300.0]}}


@pytest.fixture(scope="module")
def segmented(shared_data: Path) -> dict[str, dict]:
    """Records and derived products of three real frames (segmented at half size for speed)."""
    seg = build_segmenter(SegmenterSpec("graph"))
    out = {}
    for fid in IDS:
        rgb, sha = read_rgb(shared_data / "video" / fid)
        small = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        records = seg(small)
        masks = np.stack([r["segmentation"] for r in records])
        full_seg, key = derive(masks, np.array([r["bbox"] for r in records], float), DeriveConfig())
        out[fid] = {"image_shape": small.shape[:2], "sha256": sha, "records": records,
                    "full_seg": full_seg, "key_objects": key}
    return out


@pytest.fixture
def root(tmp_path: Path, shared_data: Path) -> Path:
    """A private copy of the source frames, so that a test may change one."""
    for fid in IDS:
        dst = tmp_path / "root" / fid
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "video" / fid, dst)
    return tmp_path / "root"


def manifest(root: Path, ids=IDS) -> Manifest:
    return Manifest("folder", str(root), [Frame(fid, "judo") for fid in ids])


def write(path: Path, segmented: dict, ids, bad=None, segmenter=SEGMENTER) -> Path:
    with StoreWriter(path, segmenter=segmenter, derive_config=DeriveConfig().to_dict(),
                     source={"layout": "folder"}) as w:
        for fid in ids:
            w.add_frame(fid, **segmented[fid])
        for fid, reason in (bad or {}).items():
            w.add_bad(fid, reason)
    return path


@pytest.fixture
def stores(tmp_path: Path, segmented) -> Path:
    d = tmp_path / "stores"
    write(d / "shard-000.h5", segmented, IDS[:2])
    write(d / "shard-001.h5", segmented, IDS[2:])
    return d


def test_verify_ok(stores, root, segmented):
    report = verify(stores, manifest(root), progress=False)
    assert report.ok, report.lines
    n_masks = sum(len(segmented[f]["records"]) for f in IDS)
    assert report.counts == {"shards": 2, "frames": 3, "masks": n_masks, "bad": 0, "problems": 0}


def test_verify_missing_and_extra_frames(stores, root):
    report = verify(stores, manifest(root, IDS + ["judo/00009.jpg"]), progress=False)
    assert not report.ok
    assert report.lines == ["missing frame 'judo/00009.jpg': in the manifest, in no store"]
    report = verify(stores, manifest(root, IDS[:2]), progress=False)
    assert report.lines == ["extra frame 'judo/00002.jpg' in shard-001.h5: not in the manifest"]


def test_verify_duplicate_bad_and_mixed_segmenters(tmp_path, root, segmented):
    d = tmp_path / "stores"
    write(d / "a.h5", segmented, IDS[:2], bad={"judo/00003.jpg": "JPEG is truncated"})
    other = {**SEGMENTER, "config": {"scales": [50.0]}}
    write(d / "b.h5", segmented, IDS[1:], segmenter=other)
    report = verify(d, manifest(root, IDS + ["judo/00003.jpg"]), check_hashes=False, progress=False)
    assert not report.ok and not report.only_bad_frames
    assert report.lines[0] == "bad frame 'judo/00003.jpg': JPEG is truncated"
    assert report.bad_frames == {"judo/00003.jpg": "JPEG is truncated"}
    assert "a.h5 and b.h5 differ in segmenter field 'config'" in report.lines[1]
    assert "frame 'judo/00001.jpg' is stored 2 times: a.h5, b.h5" in report.lines
    (d / "b.h5").unlink()
    write(d / "b.h5", segmented, IDS[2:])
    report = verify(d, manifest(root, IDS + ["judo/00003.jpg"]), check_hashes=False, progress=False)
    assert not report.ok and report.only_bad_frames and len(report.lines) == 1


def test_verify_changed_source_image(stores, root):
    path = root / IDS[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify(stores, manifest(root), progress=False)
    assert len(report.lines) == 1
    store = next(stores.glob("*.h5")).name
    assert report.lines[0].startswith(f"shard {store}, frame '{IDS[1]}': source image changed since it was "
                                      "segmented")
    # Its masks are stale: the shard is bad (what --repair makes again). Before: no bad shard.
    assert report.bad_shards == {store: report.lines[0]} and not report.only_bad_frames
    # --no-hash hashes the sources modified after their store was written: this one is.
    assert verify(stores, manifest(root), check_hashes=False, progress=False).lines == report.lines
    before = (stores / store).stat().st_mtime_ns - 10**9
    os.utime(path, ns=(before, before))  # a source as old as its store is not read with --no-hash
    assert verify(stores, manifest(root), check_hashes=False, progress=False).ok
    path.unlink()
    assert "cannot read source image" in verify(stores, manifest(root), progress=False).lines[0]


def test_verify_corrupt_shard(stores, root):
    shard = stores / "shard-000.h5"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # a truncated copy in place of the store
    report = verify(stores, manifest(root), progress=False)
    assert not report.ok
    assert any(line.startswith("shard shard-000.h5") for line in report.lines), report.lines
    assert any(f"'{IDS[0]}'" in line for line in report.lines)


def test_verify_wrong_full_seg_area_and_keys(stores, root, segmented):
    n = len(segmented[IDS[0]]["records"])
    assert n < 255
    with h5py.File(stores / "shard-000.h5", "r+") as f:
        f["derived/full_seg"][:10] = 255  # frame 0, 8-bit labels: 255 > its mask count
        f["masks/area"][0] += 1
        f["derived/key_objects"][0] = n + 5
    write_sidecar(stores / "shard-000.h5")  # as a buggy writer would commit it: the checksum matches
    report = verify(stores, manifest(root), check_hashes=False, progress=False)
    text = "\n".join(report.lines)
    assert f"shard shard-000.h5, frame '{IDS[0]}': full_seg label 255 out of range 0..{n}" in text
    assert f"frame '{IDS[0]}', mask 0: stored area" in text
    assert "key-object indices" in text
    assert len(report.lines) == 3


def test_commands_index_verify_derive(stores, root, tmp_path):
    runner = CliRunner()
    manifest(root).save(tmp_path / "manifest.json")
    res = runner.invoke(main, ["index", "--stores", str(stores)])
    assert res.exit_code == 0, res.output
    assert "3 frames (0 bad) in 2 stores" in res.output and (stores / INDEX_NAME).is_file()
    args = ["verify", "--stores", str(stores), "--manifest", str(tmp_path / "manifest.json"), "-q"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0 and res.output.startswith("ok: 2 shards, 3 frames"), res.output

    res = runner.invoke(main, ["derive", "--stores", str(stores)])
    assert res.exit_code == 0 and "0 stores re-derived, 2 already derived" in res.output, res.output
    res = runner.invoke(main, ["derive", "--stores", str(stores), "--key-min-overlaps", "1"])
    assert res.exit_code == 0 and "2 stores re-derived" in res.output, res.output
    assert MaskStore(stores / "shard-001.h5").derive_config["min_overlaps"] == 1
    assert Index.load(stores).derive_config["min_overlaps"] == 1  # rebuilt, not stale
    assert runner.invoke(main, args).exit_code == 0

    (root / IDS[0]).write_bytes(b"changed")
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and res.output.startswith("NOT OK") and IDS[0] in res.output
    res = runner.invoke(main, ["index", "--stores", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "store directory not found" in res.output
