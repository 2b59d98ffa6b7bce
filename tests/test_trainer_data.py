"""trainer.data on tiny synthetic scenes with exact GT and real mask stores: the join by frame id, the
checks that fail before training, co-transforms (recovered from the pixels and checked against labels,
key masks and GT flow), mixes, and the loader (fork and spawn workers, reproducible epochs)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_instance_stores
from unsamflow.pipeline.cli import main as pipeline_cli
from unsamflow.pipeline.errors import BadInputError, StoreError
from unsamflow.pipeline.images import read_rgb, write_png
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.store import Index, MaskStore, StoreWriter, build_index
from unsamflow.pipeline.verify import verify
from unsamflow.trainer.data import (
    CoTransformConfig,
    SampleKey,
    build_loader,
    check_files,
    image_size,
    open_pairs,
    parse_mix,
    set_epoch,
)
from unsamflow.trainer.data.checks import StoredFrame
from unsamflow.trainer.warp import flow_warp

pytestmark = pytest.mark.usefixtures("one_thread")
CROP = (48, 96)
ALL_ON = CoTransformConfig(CROP, hflip=True, vflip=True, swap=True)


def tiny(root: Path, stores: Path | None, spec: str = "synthetic", **kw):
    masks = None if stores is None else {"synthetic": stores}
    return open_pairs(spec, roots={"synthetic": root}, masks=masks, **kw)


@pytest.fixture
def private_set(tiny_train_set, tmp_path) -> Path:
    """A copy of the tiny set's frames that a test may change (stores are written per test)."""
    return Path(shutil.copytree(tiny_train_set.root, tmp_path / "synthetic"))


def pair_ids(root: Path) -> list[tuple[str, str]]:
    return [(p.frame1, p.frame2) for p in Manifest.load(root / "manifest.json").pairs]


# -- the join ----------------------------------------------------------------------------------------
def test_sample_joins_frames_stores_and_gt(tiny_train_set):
    ds = tiny(tiny_train_set.root, tiny_train_set.stores)
    assert len(ds) == 6 and ds.gt and ds.occ and not ds.skipped
    index = Index.load(tiny_train_set.stores)
    for i in range(len(ds)):
        s = ds[i]
        f1, f2 = s["frame1"], s["frame2"]
        assert (f1, f2) == pair_ids(tiny_train_set.root)[i]
        rgb, _ = read_rgb(tiny_train_set.root / f1)
        assert s["img1"].dtype == torch.float32 and s["img1"].shape == (3, 64, 128)
        assert torch.equal(s["img1"], torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
        store, row = index.store_for(f1)
        assert s["full_seg1"].dtype == torch.int64
        assert np.array_equal(s["full_seg1"].numpy(), store.read_full_seg(row))
        store2, row2 = index.store_for(f2)
        assert np.array_equal(s["full_seg2"].numpy(), store2.read_full_seg(row2))
        keys = store.read_masks(row, store.read_key_objects(row))
        assert s["key_masks"].shape == (8, 64, 128) and s["key_masks"].dtype == torch.bool
        n = int(s["key_count"])
        assert n == len(keys) > 0
        assert np.array_equal(s["key_masks"][:n].numpy(), keys) and not s["key_masks"][n:].any()
        assert s["flow"].shape == (2, 64, 128) and s["valid"].all() and s["occ"].dtype == torch.bool


def test_resize_zooms_frames_labels_keys_and_gt_together(tiny_train_set):
    """data.resize (the reference's KITTI protocol: whole frames zoomed to the test size): frames
    bilinear as evaluation resizes them, full_seg and key masks nearest, GT flow scaled."""
    from unsamflow.trainer.evaluation.padding import resize_images, resize_labels

    size = (32, 96)  # from 64 x 128: y / 2, x * 3 / 4
    ds = tiny(tiny_train_set.root, tiny_train_set.stores, transform=CoTransformConfig(resize=size))
    plain = tiny(tiny_train_set.root, tiny_train_set.stores)
    s, p = ds[0], plain[0]
    assert s["img1"].shape == (3, *size) and s["img1"].dtype == torch.float32
    assert torch.allclose(s["img1"], resize_images(p["img1"][None], size)[0], atol=1e-6)
    assert torch.equal(s["full_seg2"], resize_labels(p["full_seg2"][None], size)[0])
    n = int(s["key_count"])
    assert n == int(p["key_count"]) > 0 and s["key_masks"].shape[-2:] == size
    assert torch.equal(s["key_masks"][:n], resize_labels(p["key_masks"][None, :n], size)[0])
    nearest = resize_labels(p["flow"][None], size)[0]
    assert torch.allclose(s["flow"], nearest * torch.tensor([0.75, 0.5]).view(2, 1, 1))
    cropped = tiny(tiny_train_set.root, tiny_train_set.stores,
                   transform=CoTransformConfig((32, 64), resize=(48, 96)))[0]
    assert cropped["img1"].shape == (3, 32, 64) and cropped["full_seg1"].shape == (32, 64)
    with pytest.raises(BadInputError, match="resized to 96x48, smaller than the crop 128x64"):
        tiny(tiny_train_set.root, tiny_train_set.stores,
             transform=CoTransformConfig((64, 128), resize=(48, 96)))


def test_without_stores_gives_zero_masks(tiny_train_set):
    ds = tiny(tiny_train_set.root, None, transform=CoTransformConfig(CROP), max_key_objects=3)
    s = ds[0]
    assert s["full_seg1"].shape == CROP and not s["full_seg1"].any() and not s["full_seg2"].any()
    assert s["key_masks"].shape == (3, *CROP) and int(s["key_count"]) == 0


def test_key_objects_capped_at_k_and_cut_by_the_crop(tiny_train_set):
    ds = tiny(tiny_train_set.root, tiny_train_set.stores, transform=CoTransformConfig((16, 16)),
              max_key_objects=1)
    counts = [int(ds[SampleKey(i, e)]["key_count"]) for i in range(len(ds)) for e in range(4)]
    assert set(counts) <= {0, 1} and 1 in counts
    for i in range(len(ds)):
        s = ds[SampleKey(i, 2)]
        n = int(s["key_count"])
        assert all(s["key_masks"][j].any() for j in range(n))  # masks the crop cut away are dropped


# -- mixes ---------------------------------------------------------------------------------------------
def test_parse_mix():
    parts = parse_mix("sintel-clean+sintel-final*2+kitti-2015-multiview*3")
    assert [(p.written, p.name, p.repeat) for p in parts] == [
        ("sintel-clean", "sintel-clean-training", 1), ("sintel-final", "sintel-final-training", 2),
        ("kitti-2015-multiview", "kitti-2015-multiview", 3)]
    assert parts[0].keys == ["sintel-clean", "sintel-clean-training", "sintel"]
    for bad, what in [("sintel-dirty", "unknown dataset 'sintel-dirty'"), ("sintel-clean*0", "must be >= 1"),
                      ("sintel-clean*x", r"is not NAME or NAME\*N"), ("", "non-empty"),
                      ("synthetic++synthetic", "component ''")]:
        with pytest.raises(BadInputError, match=what):
            parse_mix(bad)


def test_mix_repeats_give_the_right_length(tiny_train_set):
    root = tiny_train_set.root
    roots = {"synthetic": root, "folder": root / "training" / "clean"}
    masks = {"synthetic": tiny_train_set.stores, "folder": None}  # the folder set has no stores
    ds = open_pairs("synthetic*3+folder", roots=roots, masks=masks)
    assert len(ds) == 3 * 6 + 6 and not ds.gt  # the folder set has no GT, so the mix gives none
    assert "synthetic: 6 pairs x3, folder: 6 pairs x1" in ds.summary()
    seen = Counter((ds[i]["frame1"], int(ds[i]["key_count"]) > 0) for i in range(len(ds)))
    assert all(n == 3 for (f, keyed), n in seen.items() if f.startswith("training/"))
    assert all(n == 1 and not keyed for (f, keyed), n in seen.items() if not f.startswith("training/"))
    batch = torch.utils.data.default_collate([ds[0], ds[len(ds) - 1]])  # stored and storeless samples mix
    assert batch["img1"].shape == (2, 3, 64, 128) and batch["key_count"].tolist()[1] == 0
    assert len(open_pairs("synthetic*2", roots={"synthetic": root})) == 12
    with pytest.raises(BadInputError, match=r"no masks entry for dataset 'folder'.*'folder'"):
        open_pairs("synthetic+folder", roots=roots, masks={"synthetic": tiny_train_set.stores})
    with pytest.raises(BadInputError, match="no roots entry for dataset 'synthetic'"):
        open_pairs("synthetic", roots={"sintel": root})


# -- bad input fails before training, naming the frame --------------------------------------------------
def test_frame_without_store_entry_fails(private_set, tmp_path):
    ids = [f.id for f in Manifest.load(private_set / "manifest.json").frames]
    stores = write_instance_stores(private_set, tmp_path / "stores", frames=ids[:1] + ids[2:])
    with pytest.raises(StoreError, match=rf"frame '{ids[1]}' has no entry in the mask stores of {stores}"):
        tiny(private_set, stores)


def test_store_of_another_file_or_size_fails(private_set, tiny_train_set):
    fid = pair_ids(private_set)[2][1]
    rgb, _ = read_rgb(private_set / fid)
    rgb[0, 0] ^= 1  # same size, other content: only the hash sees it
    write_png(private_set / fid, rgb)
    with pytest.raises(StoreError, match=rf"frame '{fid}': the file differs from the one its mask store"):
        tiny(private_set, tiny_train_set.stores)
    assert len(tiny(private_set, tiny_train_set.stores, check="size")) == 6
    assert len(tiny(private_set, tiny_train_set.stores, check="none")) == 6
    write_png(private_set / fid, cv2.resize(rgb, (256, 128)))  # the set at another resolution
    for check in ("hash", "size"):
        with pytest.raises(StoreError, match=rf"frame '{fid}': .*"):
            tiny(private_set, tiny_train_set.stores, check=check)
    msg = rf"frame '{fid}': the file is 256x128 but its mask store has 128x64"
    with pytest.raises(StoreError, match=msg):
        tiny(private_set, tiny_train_set.stores, check="size")
    with pytest.raises(BadInputError, match="check must be one of hash, size, none"):
        tiny(private_set, tiny_train_set.stores, check="md5")


def test_check_sample_checks_only_some_frames(private_set, tiny_train_set):
    fid = pair_ids(private_set)[0][0]
    write_png(private_set / fid, np.zeros((64, 128, 3), np.uint8))
    stores = [MaskStore(p) for p in sorted(tiny_train_set.stores.glob("*.h5"))]
    stored = [store.read(f) for store in stores for f in store.frame_ids]
    frames = [StoredFrame(fm.frame_id, private_set / fm.frame_id, fm.image_shape, fm.sha256) for fm in stored]
    assert len(check_files(frames, "hash")) == 1
    found = [len(check_files(frames, "hash", sample=2, seed=s)) for s in range(12)]
    assert set(found) == {0, 1}  # a sample of 2 of the 9 frames sometimes holds the changed one


def test_image_size_from_headers(tmp_path):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp"):
        cv2.imwrite(str(tmp_path / f"a{ext}"), img)
        assert image_size(tmp_path / f"a{ext}") == (37, 53)
    cv2.imwrite(str(tmp_path / "p.jpg"), img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(tmp_path / "p.jpg") == (37, 53)


def test_pair_of_different_sizes_fails_then_is_left_out_once_recorded(private_set, tmp_path):
    pairs = pair_ids(private_set)
    middle = pairs[0][1]  # frame 2 of sequence 0: in pairs 0 and 1
    rgb, _ = read_rgb(private_set / middle)
    write_png(private_set / middle, cv2.resize(rgb, (136, 72)))
    inst = middle.replace("/clean/", "/instances/")
    cv2.imwrite(str(private_set / inst), cv2.resize(cv2.imread(str(private_set / inst), cv2.IMREAD_UNCHANGED),
                                                    (136, 72), interpolation=cv2.INTER_NEAREST))
    stores = write_instance_stores(private_set, tmp_path / "stores", index=False)
    build_index(stores)  # without the manifest: pairs are not judged
    msg = rf"frame '{middle}' is 136x72 but its pair's frame '{pairs[0][0]}' is 128x64"
    with pytest.raises(BadInputError, match=msg):
        tiny(private_set, stores)

    manifest = Manifest.load(private_set / "manifest.json")
    manifest.root = str(private_set)  # the copy's files, not the session set's
    report = verify(stores, manifest, progress=False)
    assert not report.ok and report.only_bad_frames
    assert set(report.bad_pairs) == set(pairs[:2])
    assert report.lines[0] == (f"bad pair '{pairs[0][0]}' -> '{middle}': "
                               "frame sizes differ (64x128 vs 72x136, HxW)")
    assert "2 bad pairs" in report.summary()

    res = CliRunner().invoke(pipeline_cli, ["index", "--stores", str(stores), "--manifest",
                                            str(private_set / "manifest.json")])
    assert res.exit_code == 0 and "(0 bad, 2 bad pairs)" in res.output, res.output
    saved = json.loads((stores / "index.json").read_text())["bad_pairs"]
    assert {(p["frame1"], p["frame2"]) for p in saved} == set(pairs[:2])
    ds = tiny(private_set, stores)
    assert len(ds) == 4 and set(ds.skipped) == set(pairs[:2]) and "2 bad pairs left out" in ds.summary()
    with pytest.raises(StoreError, match=rf"pair '{pairs[0][0]}' -> '{middle}': frame sizes differ"):
        tiny(private_set, stores, skip_bad=False)


def test_recorded_bad_frame_leaves_its_pairs_out(tiny_train_set, tmp_path):
    ids = [f.id for f in Manifest.load(tiny_train_set.manifest).frames]
    stores = write_instance_stores(tiny_train_set.root, tmp_path / "stores", frames=ids[1:], index=False)
    with StoreWriter(stores / "bad.h5", segmenter={"name": "instances", "config": {}},
                     derive_config=MaskStore(stores / "seq_000.h5").derive_config, source={}) as w:
        w.add_bad(ids[0], "JPEG is truncated")
    build_index(stores)
    ds = tiny(tiny_train_set.root, stores)
    assert len(ds) == 5 and ds.skipped == {(ids[0], ids[1]): f"frame '{ids[0]}' is bad: JPEG is truncated"}
    with pytest.raises(StoreError, match=f"frame '{ids[0]}' is bad: JPEG is truncated"):
        tiny(tiny_train_set.root, stores, skip_bad=False)


def test_crop_larger_than_the_frames_fails(tiny_train_set):
    with pytest.raises(BadInputError, match=r"frame 'training/clean/seq_000/frame_0001.png' is 128x64, "
                                            r"smaller than the crop 96x80"):
        tiny(tiny_train_set.root, tiny_train_set.stores, transform=CoTransformConfig((80, 96)))


# -- co-transforms ---------------------------------------------------------------------------------------
def find_transform(original: np.ndarray, out: torch.Tensor) -> tuple[int, int, bool, bool]:
    """(top, left, hflip, vflip) that turn `original` (H, W, 3 uint8) into `out`, found from the pixels."""
    target = np.rint(out.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    h, w = target.shape[:2]
    found = []
    for vflip in (False, True):
        for hflip in (False, True):
            img = original[::-1] if vflip else original
            img = img[:, ::-1] if hflip else img
            for top in range(img.shape[0] - h + 1):
                for left in range(img.shape[1] - w + 1):
                    if np.array_equal(img[top:top + h, left:left + w], target):
                        # offsets in the unflipped frame
                        y = img.shape[0] - h - top if vflip else top
                        x = img.shape[1] - w - left if hflip else left
                        found.append((y, x, hflip, vflip))
    assert len(found) == 1, found
    return found[0]


def transform(x: np.ndarray, t: tuple[int, int, bool, bool], h: int, w: int) -> np.ndarray:
    top, left, hflip, vflip = t
    out = x[..., top:top + h, left:left + w]
    out = out[..., ::-1, :] if vflip else out
    return out[..., ::-1] if hflip else out


def photometric_error(s: dict) -> float:
    """Mean |frame 1 - frame 2 warped by the GT flow| over non-occluded pixels landing inside the frame."""
    img1, img2, flow = s["img1"][None], s["img2"][None], s["flow"][None]
    warped = flow_warp(img2, flow)
    h, w = flow.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    tx, ty = xs + flow[0, 0], ys + flow[0, 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1) & ~s["occ"] & s["valid"]
    return float((img1 - warped).abs().mean(1)[0][inside].mean())


def test_cotransforms_keep_frames_labels_keys_and_flow_together(tiny_train_set):
    plain = tiny(tiny_train_set.root, tiny_train_set.stores)
    ds = tiny(tiny_train_set.root, tiny_train_set.stores, transform=ALL_ON)
    index = Index.load(tiny_train_set.stores)
    seen = Counter()
    for i in range(len(ds)):
        base = plain[i]
        for epoch in range(6):
            s = ds[SampleKey(i, epoch, 7)]
            swapped = s["frame1"] != base["frame1"]
            a, b = (base["img2"], base["img1"]) if swapped else (base["img1"], base["img2"])
            original = np.rint(a.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            t = find_transform(original, s["img1"])
            seen[(t[2], t[3], swapped)] += 1
            assert torch.equal(s["img2"], torch.from_numpy(transform(b.numpy(), t, *CROP).copy()))
            f1 = s["frame1"]
            store, row = index.store_for(f1)
            assert np.array_equal(s["full_seg1"].numpy(), transform(store.read_full_seg(row), t, *CROP))
            seg2_store, row2 = index.store_for(s["frame2"])
            assert np.array_equal(s["full_seg2"].numpy(), transform(seg2_store.read_full_seg(row2), t, *CROP))
            keys = store.read_masks(row, store.read_key_objects(row))  # (new) frame 1's, also when swapped
            keys = transform(keys, t, *CROP)
            keys = keys[keys.reshape(len(keys), -1).any(1)]
            n = int(s["key_count"])
            assert n == len(keys) and np.array_equal(s["key_masks"][:n].numpy(), keys)
            if swapped:
                assert not s["valid"].any()  # forward GT of the swapped pair is unknown
                continue
            flow = transform(base["flow"].numpy(), t, *CROP).copy()
            flow[0] *= -1 if t[2] else 1
            flow[1] *= -1 if t[3] else 1
            assert torch.equal(s["flow"], torch.from_numpy(flow))
            assert torch.equal(s["occ"], torch.from_numpy(transform(base["occ"].numpy(), t, *CROP).copy()))
    assert len(seen) == 8, seen  # every combination of flips and swap occurred


def flips_of(out: torch.Tensor, base: torch.Tensor) -> tuple[bool, bool]:
    """(hflip, vflip) that turn the image `base` into `out`."""
    for h in (False, True):
        for v in (False, True):
            dims = [d for d, on in ((-1, h), (-2, v)) if on]
            if torch.equal(out, base.flip(dims) if dims else base):
                return h, v
    raise AssertionError("not a flip of the frame")


def test_gt_flow_still_warps_frame2_onto_frame1_after_flips(tiny_train_set):
    plain = tiny(tiny_train_set.root, tiny_train_set.stores)
    flips = tiny(tiny_train_set.root, tiny_train_set.stores,
                 transform=CoTransformConfig(hflip=True, vflip=True))
    right, wrong = [], []
    for i in range(len(plain)):
        base = plain[i]
        before = photometric_error(base)
        assert before < 0.01, before  # exact flow of a noise-free scene
        for epoch in range(4):
            s = flips[SampleKey(i, epoch)]
            assert photometric_error(s) == pytest.approx(before, rel=1e-3, abs=1e-5)
            h, v = flips_of(s["img1"], base["img1"])
            if h or v:  # the field mirrored but its signs as read: the check would catch it
                sign = torch.tensor([-1.0 if h else 1.0, -1.0 if v else 1.0])[:, None, None]
                right.append(photometric_error(s))
                wrong.append(photometric_error(dict(s, flow=s["flow"] * sign)))
    assert len(right) >= 6 and sum(wrong) > 3 * sum(right), (right, wrong)


def test_same_key_same_sample_other_epoch_other_crop(tiny_train_set):
    ds = tiny(tiny_train_set.root, tiny_train_set.stores, transform=ALL_ON)
    a, b = ds[SampleKey(2, 3, 5, 1)], ds[SampleKey(2, 3, 5, 1)]
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    others = [ds[SampleKey(2, e, 5, 1)]["img1"] for e in range(4, 8)] + [ds[SampleKey(2, 3, 5, 0)]["img1"]]
    assert any(not torch.equal(a["img1"], o) for o in others)


# -- the loader ------------------------------------------------------------------------------------------
def epoch_batches(loader, epoch: int, skip: int = 0) -> list[dict]:
    set_epoch(loader, epoch, skip)
    return list(loader)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_loader_reads_every_sample_once_per_epoch(tiny_train_set, start_method):
    ds = tiny(tiny_train_set.root, tiny_train_set.stores, "synthetic*2", transform=ALL_ON, max_key_objects=4)
    assert all(not c.index._stores for c in ds.components)  # no store handle open in the parent
    loader = build_loader(ds, batch_size=3, seed=11, num_workers=2, start_method=start_method)
    assert not loader.pin_memory or torch.cuda.is_available()
    set_epoch(loader, 0)
    assert sorted(k.index for k in loader.sampler) == list(range(len(ds)))  # each sample once ...
    epochs = [epoch_batches(loader, e) for e in (0, 1)]
    for batches in epochs:
        assert len(batches) == 4
        b = batches[0]
        assert b["img1"].shape == (3, 3, *CROP) and b["full_seg1"].dtype == torch.int64
        assert b["key_masks"].shape == (3, 4, *CROP) and b["key_count"].shape == (3,)
        assert isinstance(b["frame1"], list) and "flow" in b
        got = Counter(frozenset(p) for b in batches for p in zip(b["frame1"], b["frame2"], strict=True))
        assert got == Counter({frozenset(p): 2 for p in pair_ids(tiny_train_set.root)})  # ... and read once
    order = [[tuple(b["frame1"]) for b in batches] for batches in epochs]
    assert order[0] != order[1]
    inline = build_loader(ds, batch_size=3, seed=11, num_workers=0)  # same keys -> same batches, any workers
    for e, batches in enumerate(epochs):
        for b, c in zip(batches, epoch_batches(inline, e), strict=True):
            assert torch.equal(b["img1"], c["img1"]) and torch.equal(b["key_masks"], c["key_masks"])
    resumed = epoch_batches(inline, 1, skip=2)  # resume after batch 2 of epoch 1
    assert [b["frame1"] for b in resumed] == [b["frame1"] for b in epochs[1][2:]]
    assert torch.equal(resumed[0]["img2"], epochs[1][2]["img2"])


def test_distributed_sampler_when_a_process_group_exists(tiny_train_set, tmp_path):
    import torch.distributed as dist

    ds = tiny(tiny_train_set.root, tiny_train_set.stores, transform=ALL_ON)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(ds, batch_size=2, seed=3, num_workers=0)
        assert isinstance(loader.sampler.inner, torch.utils.data.DistributedSampler)
        set_epoch(loader, 4)
        keys = list(loader.sampler)
        assert [k.index for k in keys] == list(loader.sampler.inner)
        assert sorted(k.index for k in keys) == list(range(6))
        assert {(k.epoch, k.seed, k.rank) for k in keys} == {(4, 3, 0)}
    finally:
        dist.destroy_process_group()


# -- key objects from tracks (augment.key_objects.require_track / track_motion) ----------------------------
def _tracked_pair_set(tmp_path, drop: bool):
    """One synthetic sequence of 2 frames, true-instance stores, tracked; with `drop`, frame 2 lacks the
    largest object (a key object of frame 1). Returns (root, stores, that object's instance id)."""
    from test_track import instance_stores, synth_set
    from unsamflow.pipeline.flow.io import read_label_png
    from unsamflow.pipeline.linker import TrackConfig
    from unsamflow.pipeline.track import run_track

    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=1, frames=2, seed=3)
    f1, f2 = manifest.frame_ids
    inst = read_label_png(root / f1.replace("/clean/", "/instances/"))
    obj = int(np.argmax(np.bincount(inst.ravel())[1:])) + 1
    stores = instance_stores(root, tmp_path / "stores", drop={f2: obj} if drop else None)
    run_track(stores, manifest, TrackConfig(), None, progress=False)
    build_index(stores, manifest=manifest)
    return root, stores, obj


def test_require_track_keeps_only_key_objects_that_reach_frame_2(tmp_path):
    root, stores, _ = _tracked_pair_set(tmp_path, drop=True)
    plain = CoTransformConfig((64, 128), hflip=False, vflip=False, swap=False)
    every = tiny(root, stores, transform=plain)[0]
    tracked = tiny(root, stores, transform=plain, key_options={"require_track": True})[0]
    assert int(tracked["key_count"]) == int(every["key_count"]) - 1 >= 1
    kept = tracked["key_masks"][: int(tracked["key_count"])]
    assert all(any(torch.equal(k, e) for e in every["key_masks"]) for k in kept)
    untracked = tmp_path / "untracked"
    write_instance_stores(root, untracked)
    with pytest.raises(StoreError, match="need object tracks; run `unsamflow-pipeline track`"):
        tiny(root, untracked, transform=plain, key_options={"require_track": True})[0]


def test_track_motion_is_each_key_objects_own_displacement(tmp_path):
    """Without crop or flips, the centroid shift of a key object to its frame-2 mask is close to the
    mean exact flow inside it (easy scene: small rotation and zoom); a swapped pair gets the reverse."""
    from unsamflow.pipeline.flow.io import read_flo

    root, stores, _ = _tracked_pair_set(tmp_path, drop=False)
    plain = CoTransformConfig((64, 128), hflip=False, vflip=False, swap=False)
    s = tiny(root, stores, transform=plain, key_options={"track_motion": True})[0]
    n = int(s["key_count"])
    assert n and bool(s["key_motion_valid"][:n].all()) and not bool(s["key_motion_valid"][n:].any())
    flow, _ = read_flo(root / Manifest.load(root / "manifest.json").pairs[0].flow)
    for mask, motion in zip(s["key_masks"][:n].numpy(), s["key_motion"][:n].numpy(), strict=True):
        assert np.abs(flow[mask].mean(0) - motion).max() < 1.0, (flow[mask].mean(0), motion)
    assert "key_motion" not in tiny(root, stores, transform=plain)[0]


def test_key_object_cache_takes_the_track_motion_where_valid():
    from unsamflow.trainer.augment.key_objects import KeyObjectCache

    img = torch.rand(2, 3, 32, 48)
    masks = torch.zeros(2, 1, 32, 48, dtype=torch.bool)
    masks[:, 0, 8:20, 10:30] = True
    flow = torch.full((2, 2, 32, 48), 3.0)
    own = torch.tensor([[[-5.0, 2.0]], [[7.0, 7.0]]])
    cache = KeyObjectCache(4, (16, 24))
    cache.push(img, masks, torch.tensor([1, 1]), flow, torch.Generator().manual_seed(0),
               key_motion=own, key_motion_valid=torch.tensor([[True], [False]]))
    assert cache.motion[:2].tolist() == [[-5.0, 2.0], [3.0, 3.0]]
