"""Object tracks (pipeline.linker, pipeline.track, store.tracks): ids through known motion, gaps, ids per
sequence (also across a sequence split over two stores), resume after SIGKILL, old stores, verify."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_reliability import PYTHON, TESTS_ENV
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.derive import DeriveConfig, derive
from unsamflow.pipeline.flow.io import read_label_png
from unsamflow.pipeline.images import file_sha256
from unsamflow.pipeline.linker import TrackConfig, link_sequence
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.masks import CropMasks
from unsamflow.pipeline.store import MaskStore, StoreWriter
from unsamflow.pipeline.store.integrity import write_sidecar
from unsamflow.pipeline.store.tracks import read_key_tracks, read_mask_tracks, sequence_of, track_config
from unsamflow.pipeline.synthetic import generate_dataset
from unsamflow.pipeline.synthetic.scenes import instance_records
from unsamflow.pipeline.track import run_track
from unsamflow.pipeline.verify import verify

DERIVE = {"min_h": 8, "max_h": 64, "min_w": 8, "max_w": 128, "min_fill": 0.3, "min_overlaps": 1}


def cli(args: list, code: int = 0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    return res


# -- the linker on hand-made masks with exactly known motion ------------------------------------------
def _square_frames(steps: int, speed: int, absent: int | None = None):
    """Two 8x8 squares on a 48x80 frame: A moves `speed` px right per frame, B stands still; A is missing
    from frame `absent`. Yields (CropMasks, flow) per frame, the flow exact (new pixel -> old place)."""
    out = []
    for t in range(steps):
        a = np.zeros((48, 80), bool)
        a[10:18, 4 + speed * t : 12 + speed * t] = True
        b = np.zeros((48, 80), bool)
        b[30:38, 40:48] = True
        masks = [b] if t == absent else [a, b]
        flow = np.zeros((48, 80, 2), np.float32)
        flow[..., 0][a] = -speed
        out.append((CropMasks.from_stack(np.stack(masks)), flow))
    return out


def _link(frames, cfg: TrackConfig, use_flow: bool) -> list[np.ndarray]:
    """Link (masks, exact flow) frames: the flow stands in for the image, so flow(new, old) is `new`."""
    return link_sequence(iter(frames), (lambda new, old: new) if use_flow else None, cfg)


def test_linker_follows_known_motion_that_iou_alone_loses():
    frames = _square_frames(5, speed=10)  # A moves further than its own size: IoU in place is 0
    with_flow = _link(frames, TrackConfig(), use_flow=True)
    assert [t.tolist() for t in with_flow] == [[0, 1]] * 5
    plain = _link(frames, TrackConfig(linker="iou"), use_flow=False)
    assert len({int(t[0]) for t in plain}) == 5  # a new id for A in every frame
    assert {int(t[1]) for t in plain} == {1}  # B stands still: one id either way


@pytest.mark.parametrize(("gap", "same"), [(1, True), (0, False), (2, True)])
def test_linker_gap(gap, same):
    frames = _square_frames(4, speed=3, absent=1)
    ids = _link(frames, TrackConfig(gap=gap), use_flow=True)
    assert ids[1].tolist() == [ids[0][1]]  # B keeps its id throughout
    assert bool(ids[2][0] == ids[0][0]) is same


def test_a_size_change_in_a_sequence_ends_its_tracks_instead_of_failing():
    """Frames of two sizes in one sequence are a bad pair (the index records it): no link across it."""
    frames = _square_frames(4, speed=3)
    small = np.zeros((40, 80), bool)
    small[30:38, 40:48] = True
    flow = np.zeros((40, 80, 2), np.float32)
    ids = _link([frames[0], frames[1], (CropMasks.from_stack(small[None]), flow), frames[3]], TrackConfig(),
                use_flow=True)  # fmt: skip
    assert ids[1].tolist() == ids[0].tolist()
    assert int(ids[2][0]) not in set(ids[1].tolist())  # a new track after the size change
    assert set(ids[3].tolist()).isdisjoint(ids[1].tolist())  # and again after the change back


@pytest.mark.parametrize(("gap", "same"), [(1, True), (0, False)])
def test_linker_bad_frame_counts_as_a_miss(gap, same):
    """A bad frame (no masks, no image) is a frame every track misses: the estimates wait in the last good
    frame and the next flow (here: the exact one from that frame) carries them on."""
    frames = _square_frames(4, speed=3)
    masks3, _ = frames[2]
    flow = np.zeros((48, 80, 2), np.float32)  # frame 2 -> frame 0: A moved 6 px
    a2 = np.zeros((48, 80), bool)
    a2[10:18, 10:18] = True
    flow[..., 0][a2] = -6
    ids = _link([frames[0], (None, None), (masks3, flow), frames[3]], TrackConfig(gap=gap), use_flow=True)
    assert ids[1].size == 0
    assert bool(ids[2][0] == ids[0][0]) is same and bool(ids[2][1] == ids[0][1]) is same
    assert ids[3].tolist() == ids[2].tolist()


# -- synthetic sequences through the stage -------------------------------------------------------------
def synth_set(root: Path, sequences: int = 2, frames: int = 5, seed: int = 0) -> Manifest:
    manifest, _ = generate_dataset(root, sequences=sequences, frames=frames, size=(64, 128), seed=seed,
                                   difficulty="easy")
    return manifest


def instance_stores(root: Path, out: Path, groups: list[list[str]] | None = None,
                    drop: dict[str, int] | None = None) -> Path:
    """Stores whose masks are the true instances (a perfect segmenter): one store per sequence, or one
    per list of frame ids in `groups`; drop[frame id] = an instance left out of that frame."""
    manifest = Manifest.load(root / "manifest.json")
    cfg = DeriveConfig.from_dict(DERIVE)
    if groups is None:
        groups = [[f.id for f in fs] for fs in manifest.sequences().values()]
    for i, ids in enumerate(groups):
        with StoreWriter(out / f"store-{i}.h5", segmenter={"name": "instances", "config": {}},
                         derive_config=cfg.to_dict(), source={"layout": "synthetic", "root": str(root)}) as w:
            for fid in ids:
                inst = read_label_png(root / fid.replace("/clean/", "/instances/"))
                records = [r for r in instance_records(inst)
                           if not (drop and fid in drop and np.all(inst[r["segmentation"]] == drop[fid]))]
                masks = np.stack([r["segmentation"] for r in records])
                full_seg, key = derive(masks, np.array([r["bbox"] for r in records], float), cfg)
                w.add_frame(fid, image_shape=inst.shape, sha256=file_sha256(root / fid), records=records,
                            full_seg=full_seg, key_objects=key)
    return out


def stored_tracks(stores: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(stores.glob("*.h5")):
        with MaskStore(path) as s:
            for fid in s.frame_ids:
                out[fid] = read_mask_tracks(s, fid)
    return out


def truth(root: Path, stores: Path) -> dict[str, list[tuple[int, int, int]]]:
    """frame id -> (instance, area, track id) of each mask."""
    out = {}
    for path in sorted(stores.glob("*.h5")):
        with MaskStore(path) as s:
            for fid in s.frame_ids:
                inst = read_label_png(root / fid.replace("/clean/", "/instances/"))
                tracks = read_mask_tracks(s, fid)
                out[fid] = [(int(np.bincount(inst[m]).argmax()), int(m.sum()), int(t))
                            for m, t in zip(s.read_masks(fid), tracks, strict=True)]
    return out


def test_track_ids_follow_objects_per_sequence_and_across_a_split(tmp_path):
    """Known motion (synthetic, exact instance masks): every object that stays in view keeps one id
    through its sequence, also where the sequence is split over two stores; objects and sequences never
    share an id; key objects carry their mask's id; verify passes; a second run does nothing."""
    root = tmp_path / "syn"
    manifest = synth_set(root)
    seqs = [[f.id for f in fs] for fs in manifest.sequences().values()]
    stores = instance_stores(root, tmp_path / "stores", groups=[seqs[0][:3], seqs[0][3:] + seqs[1]])
    res = cli(["track", "--stores", stores, "--manifest", root / "manifest.json", "--workers", "1",
               "--no-dashboard", "-q"])
    assert "2 stores written" in res.output and "2 sequences" in res.output, res.output
    seen: dict[int, set] = {}  # track id -> (sequence, instance) pairs it was given to
    for n, ids in enumerate(seqs):
        per_object: dict[int, set] = {}
        for fid in ids:
            for inst, area, tid in truth(root, stores)[fid]:
                assert sequence_of(np.array([tid]))[0] == n
                seen.setdefault(tid, set()).add((n, inst))
                if area >= 100:
                    per_object.setdefault(inst, set()).add(tid)
        assert per_object and all(len(t) == 1 for t in per_object.values()), per_object
    assert all(len(v) == 1 for v in seen.values()), seen  # no id for two objects or two sequences
    with MaskStore(stores / "store-1.h5") as s:
        fid = s.frame_ids[0]
        assert np.array_equal(read_key_tracks(s, fid), read_mask_tracks(s, fid)[s.read_key_objects(fid)])
        assert s.format_version == 2 and track_config(s)["gap"] == 1
    assert verify(stores, manifest, check_hashes=False, progress=False).ok
    res = cli(["track", "--stores", stores, "--manifest", root / "manifest.json", "-q"])
    assert "0 stores written, 2 already tracked" in res.output


@pytest.mark.parametrize(("gap", "same"), [(1, True), (0, False)])
def test_object_missing_for_one_frame_keeps_its_id_only_with_a_gap(tmp_path, gap, same):
    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=1, frames=3, seed=3)
    ids = manifest.frame_ids
    first = read_label_png(root / ids[0].replace("/clean/", "/instances/"))
    obj = int(np.argmax(np.bincount(first.ravel())[1:])) + 1  # the largest object
    stores = instance_stores(root, tmp_path / "stores", drop={ids[1]: obj})
    res = run_track(stores, manifest, TrackConfig(gap=gap), None, progress=False)
    assert not res.failed, res.summary()
    tr = truth(root, stores)
    before = [t for inst, _, t in tr[ids[0]] if inst == obj]
    after = [t for inst, _, t in tr[ids[2]] if inst == obj]
    assert not [t for inst, _, t in tr[ids[1]] if inst == obj]
    assert (before == after) is same, (before, after)
    others = {inst: t for inst, _, t in tr[ids[0]] if inst != obj}
    assert others == {inst: t for inst, _, t in tr[ids[2]] if inst != obj}


def test_resume_after_sigkill_gives_identical_tracks(tmp_path):
    """SIGKILL `pipeline track` while a worker is inside the second sequence (one store written); the next
    run writes only the other store, and every track equals an uninterrupted run's."""
    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=2, frames=4)
    killed = instance_stores(root, tmp_path / "killed")
    whole = instance_stores(root, tmp_path / "whole")
    reached, release = tmp_path / "reached", tmp_path / "release"
    args = ["track", "--stores", killed, "--manifest", root / "manifest.json", "--flow",
            "plugin_flow:make_blocking", "-f", f"reached={reached}", "-f", f"release={release}",
            "-f", "block_at=4"]  # 3 pairs per sequence: the 4th flow is the second sequence's first
    proc = subprocess.Popen([PYTHON, "-m", "unsamflow.pipeline", *map(str, args), "--workers", "1",
                             "--no-dashboard", "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=TESTS_ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            written = [p for p in killed.glob("*.h5") if _tracked(p)]
            if reached.exists() and written:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert len(written) == 1
    release.touch()
    res = cli(args + ["-q", "--workers", "1", "--no-dashboard"])  # the same command, resumed
    assert "1 stores written, 1 already tracked" in res.output, res.output
    options = {"reached": str(reached), "release": str(release), "block_at": 4}
    run_track(whole, manifest, TrackConfig(flow="plugin_flow:make_blocking", options=options), None,
              progress=False)
    a, b = stored_tracks(killed), stored_tracks(whole)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not list(killed.glob("*.tmp*")) and not list(killed.glob(".*tmp*"))


def _tracked(path: Path) -> bool:
    with MaskStore(path) as s:
        return track_config(s) is not None


def test_store_of_format_version_1_reads_and_verify_checks_tracks(tmp_path):
    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=2, frames=2)
    stores = instance_stores(root, tmp_path / "stores")
    for path in stores.glob("*.h5"):  # as unsamflow wrote stores before tracks existed
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = 1
        write_sidecar(path)
    with MaskStore(stores / "store-0.h5") as s:
        assert s.format_version == 1 and track_config(s) is None
        assert read_mask_tracks(s, s.frame_ids[0]) is None and len(s.read(0).area)
    assert verify(stores, manifest, check_hashes=False, progress=False).ok
    run_track(stores, manifest, TrackConfig(linker="iou"), None, progress=False)
    assert verify(stores, manifest, check_hashes=False, progress=False).ok
    # Damage: an id twice in one frame, and an id of the other sequence, in store-0's first frame.
    path = stores / "store-0.h5"
    with h5py.File(path, "r+") as f:
        ds = f["tracks/mask_track"]
        ds[1] = ds[0]
        ds[2] = (1 << 32) + 7
    write_sidecar(path)
    lines = verify(stores, manifest, check_hashes=False, progress=False).lines
    assert any("a track id appears twice in one frame" in x for x in lines), lines
    assert any("track ids of another sequence" in x for x in lines), lines
    # A store without tracks beside tracked ones is named.
    with h5py.File(stores / "store-1.h5", "r+") as f:
        del f["tracks"]
    write_sidecar(stores / "store-1.h5")
    lines = verify(stores, manifest, check_hashes=False, progress=False).lines
    assert any("not tracked alike" in x for x in lines), lines


def test_track_refuses_stores_missing_frames(tmp_path):
    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=2, frames=2)
    instance_stores(root, tmp_path / "stores", groups=[[manifest.frame_ids[0]]])
    res = cli(["track", "--stores", tmp_path / "stores", "--manifest", root / "manifest.json"], code=2)
    assert "3 frame(s) of the manifest are in no store" in res.output and "pipeline segment" in res.output


def test_track_scores_by_hand():
    """One object seen in 4 frames, tracked as 1, 1, 2, 2 (track 1 still has a mask at the switch):
    1 switch, purity 1, completeness 2/4; AssA: the 2 matches to track 1 (in 3 frames) score
    2 / (2 + 2 + 1), the 2 to track 2 (in 2 frames) 2 / (2 + 2 + 0), so AssA = (2 * 0.4 + 2 * 0.5) / 4."""
    from unsamflow.pipeline.track_metrics import frame_matches, score_sequence

    inst = np.zeros((8, 8), np.int64)
    inst[2:6, 2:6] = 5
    obj = inst == 5
    other = np.zeros((8, 8), bool)
    other[0, :] = True
    frames = [frame_matches(np.stack([obj]), np.array([1]), inst, ignore=(0,)),
              frame_matches(np.stack([obj]), np.array([1]), inst, ignore=(0,)),
              frame_matches(np.stack([obj, other]), np.array([2, 1]), inst, ignore=(0,)),
              frame_matches(np.stack([obj]), np.array([2]), inst, ignore=(0,))]
    s = score_sequence(frames)
    assert (s.id_switches, s.switches_old_track_present, s.matches) == (1, 1, 4)
    assert s.purity == 1.0 and s.completeness == 0.5
    assert s.assa == pytest.approx(0.45)


def test_youtube_vis_export_import_round_trip_is_identical(tmp_path):
    """Tracked stores -> export youtube-vis -> import: the same masks, metadata, derived data and tracks;
    the file has the video-instance layout (videos = sequences, one annotation per track, COCO RLE)."""
    from pycocotools import mask as mask_utils
    from test_interop import DERIVE_FLAGS, assert_same_stores
    from unsamflow.pipeline.store import build_index

    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=2, frames=3)
    stores = instance_stores(root, tmp_path / "stores")
    run_track(stores, manifest, TrackConfig(), None, progress=False)
    build_index(stores, manifest=manifest)
    out = tmp_path / "vis"
    cli(["export", "--stores", stores, "--out", out, "--format", "youtube-vis", "-q"], code=2)  # no manifest
    res = cli(["export", "--stores", stores, "--out", out, "--format", "youtube-vis", "--manifest",
               root / "manifest.json", "-q"])
    assert "6 frames" in res.output
    doc = __import__("json").loads((out / "youtube-vis.json").read_text())
    assert [v["file_names"] for v in doc["videos"]] == [[f.id for f in fs]
                                                        for fs in manifest.sequences().values()]
    ann = doc["annotations"][0]
    t = next(i for i, s in enumerate(ann["segmentations"]) if s is not None)
    rle = {**ann["segmentations"][t], "counts": ann["segmentations"][t]["counts"].encode()}
    assert mask_utils.area(rle) == ann["areas"][t] and list(mask_utils.toBbox(rle)) == ann["bboxes"][t]
    back = tmp_path / "back"
    res = cli(["import", "--format", "youtube-vis", "--from", out, "--manifest", root / "manifest.json",
               "--out", back, "--num-stores", "2", "-q", *DERIVE_FLAGS])
    assert "ok:" in res.output, res.output
    assert assert_same_stores(stores, back) == 6
    a, b = stored_tracks(stores), stored_tracks(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_show_tracks_draws_one_colour_per_track(tmp_path):
    from unsamflow.pipeline.images import read_rgb
    from unsamflow.pipeline.show_tracks import draw_tracks, track_colour
    from unsamflow.pipeline.store import build_index

    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=1, frames=3)
    stores = instance_stores(root, tmp_path / "stores")
    args = ["show", "--stores", stores, "--out", tmp_path / "pics", "--tracks", "--count", "3"]
    cli(args, code=2)  # no index
    build_index(stores, manifest=manifest)
    assert "no tracks; run `pipeline track` first" in cli(args, code=2).output
    run_track(stores, manifest, TrackConfig(), None, progress=False)
    build_index(stores, manifest=manifest)
    res = cli(args)
    strip, _ = read_rgb(Path(res.output.strip()))
    assert strip.shape[1] == 3 * (128 + 4)  # three 64x128 frames side by side
    grey = np.full((40, 40, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:30, 10:30] = True  # (12, 12): inside, off the outline and the number in the middle
    a, b = draw_tracks(grey, mask, np.array([5])), draw_tracks(grey, mask, np.array([(1 << 32) + 5]))
    assert np.array_equal(a, draw_tracks(grey, mask, np.array([5])))
    assert not np.array_equal(a[12, 12], b[12, 12])
    assert np.allclose(a[12, 12], 0.4 * 100 + 0.6 * np.array(track_colour(5)), atol=1)


def test_flow_checkpoint_links_with_a_trained_network(tmp_path):
    """--flow-checkpoint: a network checkpoint (random weights here) is the flow; a +mf one is refused
    before any cluster starts, naming the file and why."""
    from test_evaluate import _checkpoint
    from unsamflow.pipeline.commands.track import FLOW_CHECKPOINT_PLUGIN

    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=1, frames=3)
    stores = instance_stores(root, tmp_path / "stores")
    ckpt = _checkpoint(tmp_path / "net.pt")
    cfg = TrackConfig(flow=FLOW_CHECKPOINT_PLUGIN, options={"checkpoint": str(ckpt), "device": "cpu"})
    res = run_track(stores, manifest, cfg, None, progress=False)
    assert res.written == 1 and not res.failed, res.summary()
    with MaskStore(stores / "store-0.h5") as s:
        assert track_config(s)["flow"] == FLOW_CHECKPOINT_PLUGIN
    assert verify(stores, manifest, check_hashes=False, progress=False).ok
    mf = _checkpoint(tmp_path / "mf.pt", mask_features=True)
    res = cli(["track", "--stores", stores, "--manifest", root / "manifest.json", "--flow-checkpoint", mf],
              code=2)
    assert "mf.pt: this model has mask features (+mf)" in res.output, res.output


def test_derive_drops_tracks_and_track_links_again(tmp_path):
    """New key objects make the key-object tracks stale: `derive` rewrites a store without its tracks
    (verify still passes: no store is tracked), and `track` links it again."""
    from unsamflow.pipeline.store import build_index

    root = tmp_path / "syn"
    manifest = synth_set(root, sequences=1, frames=2)
    stores = instance_stores(root, tmp_path / "stores")
    run_track(stores, manifest, TrackConfig(linker="iou"), None, progress=False)
    build_index(stores, manifest=manifest)
    cli(["derive", "--stores", stores, "--key-min-h", "4", "--key-min-w", "4", "--key-min-overlaps", "1",
         "-q"])
    assert not _tracked(stores / "store-0.h5")
    assert verify(stores, manifest, check_hashes=False, progress=False).ok
    res = run_track(stores, manifest, TrackConfig(linker="iou"), None, progress=False)
    assert res.written == 1 and _tracked(stores / "store-0.h5")
    assert verify(stores, manifest, check_hashes=False, progress=False).ok


def test_run_tracks_after_segment_and_skips_tracked_stores_on_rerun(tmp_path):
    import json

    root = tmp_path / "syn"
    synth_set(root, sequences=1, frames=3)
    args = ["run", "--layout", "synthetic", "--root", root, "--out", tmp_path / "out", "--shards", "1",
            "--workers", "1", "--no-dashboard", "--pictures", "0", "--no-hash", "--json", "-q"]

    def run(*extra: str) -> dict:
        return json.loads(CliRunner().invoke(main, [str(a) for a in [*args, *extra]]).stdout)

    first = run()
    assert first["track"]["written"] == 1 and "track" in first["stages_s"] and first["verify"]["ok"]
    again = run()
    assert again["track"]["written"] == 0 and again["track"]["skipped"] == 1
    assert run("--no-track")["track"] is None
