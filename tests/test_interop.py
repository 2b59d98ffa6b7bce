"""Masks in and out: amg.py folders and COCO RLE JSON round-trip through the stores; stores explain
themselves (`description` attributes, `pipeline inspect`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.store import Index, MaskStore

DERIVE_FLAGS = ["--key-min-h", "8", "--key-max-h", "64", "--key-min-w", "8", "--key-max-w", "128",
                "--key-min-fill", "0.3", "--key-min-overlaps", "1"]  # conftest.TINY_DERIVE


def cli(args: list[str], code: int = 0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.stderr if hasattr(res, "stderr") else "", res.exception)
    return res


def assert_same_stores(a: Path, b: Path) -> int:
    ia, ib = Index.load(a), Index.load(b)
    assert ia.frame_ids == ib.frame_ids
    for fid in ia.frame_ids:
        fa, fb = ia.open(fid), ib.open(fid)
        assert np.array_equal(fa.masks, fb.masks), fid
        for name in ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box",
                     "full_seg", "key_objects"):
            assert np.array_equal(getattr(fa, name), getattr(fb, name)), (fid, name)
        assert fa.sha256 == fb.sha256
    ia.close()
    ib.close()
    return len(ia.frame_ids)


@pytest.mark.parametrize("fmt", ["amg", "coco-rle"])
def test_export_import_round_trip_gives_identical_masks(tiny_train_set, tmp_path, fmt):
    out = tmp_path / "exported"
    res = cli(["export", "--stores", tiny_train_set.stores, "--out", out, "--format", fmt, "-q"])
    assert "9 frames" in res.output
    first = Index.load(tiny_train_set.stores).frame_ids[0]
    stem = first.rsplit(".", 1)[0]
    if fmt == "amg":
        rows = (out / stem / "metadata.csv").read_text().splitlines()
        assert rows[0].startswith("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x")
        assert (out / stem / "0.png").is_file()
    else:
        from pycocotools import mask as mask_utils

        recs = json.loads((out / f"{stem}.json").read_text())
        rle = {**recs[0]["segmentation"], "counts": recs[0]["segmentation"]["counts"].encode()}
        m = mask_utils.decode(rle)
        assert m.sum() == recs[0]["area"]
        x, y, w, h = recs[0]["bbox"]
        assert list(mask_utils.toBbox(rle)) == [x, y, w + 1, h + 1]  # the stated convention
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == fmt and "x_max - x_min" in info["bbox_convention"]

    stores = tmp_path / "imported"
    res = cli(["import", "--format", fmt, "--from", out, "--manifest", tiny_train_set.manifest,
               "--out", stores, "-q", *DERIVE_FLAGS])
    assert "ok:" in res.output
    assert assert_same_stores(tiny_train_set.stores, stores) == 9
    with MaskStore(next(stores.glob("*.h5"))) as ms:
        assert ms.source["imported_from"] == {"format": fmt, "path": str(out.resolve())}
        assert ms.segmenter["name"] == "import"


def test_export_frames_glob_and_import_records_missing_frames_bad(tiny_train_set, tmp_path):
    out = tmp_path / "amg"
    seq = Index.load(tiny_train_set.stores).frame_ids[0].rsplit("/", 1)[0]
    res = cli(["export", "--stores", tiny_train_set.stores, "--out", out, "--format", "amg",
               "--frames", f"{seq}/*", "-q"])
    assert "3 frames" in res.output
    res = cli(["import", "--format", "amg", "--from", out, "--manifest", tiny_train_set.manifest,
               "--out", tmp_path / "stores", "-q", *DERIVE_FLAGS], code=1)
    assert "no amg masks for it" in res.output
    cli(["import", "--format", "amg", "--from", out, "--manifest", tiny_train_set.manifest,
         "--out", tmp_path / "stores", "-q", "--skip-bad", *DERIVE_FLAGS])


def test_every_dataset_describes_itself_and_inspect_prints_layout(tiny_train_set, tmp_path):
    out = tmp_path / "amg"
    cli(["export", "--stores", tiny_train_set.stores, "--out", out, "--format", "amg", "-q"])
    stores = tmp_path / "stores"
    cli(["import", "--format", "amg", "--from", out, "--manifest", tiny_train_set.manifest,
         "--out", stores, "-q", *DERIVE_FLAGS])
    store = next(stores.glob("*.h5"))
    with h5py.File(store, "r") as h5:
        assert "description" in h5.attrs
        names = []
        h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names and all(h5[n].attrs.get("description") for n in names)
        assert "x, y, w, h" in h5["masks/bbox"].attrs["description"]
        assert "(y, x, h, w)" in h5["masks/box"].attrs["description"]
    res = cli(["inspect", store])
    assert "masks/runs" in res.output and "run lengths" in res.output
    assert "frame '" in res.output and "key objects:" in res.output
