"""Integrity of what the pipeline reads back: index rows, stale and corrupt stores, repair.

Every case is one that went wrong silently or hung before (see each test). Stores are real: noise
frames through `segment_shard` with the grid plug-in, no cluster, except where the repair needs `run`.
Bit flips run in a child process with a time limit, since the failure they guard against is HDF5
looping for ever.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from test_reliability import PYTHON, TESTS_ENV, cli
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.errors import StoreError
from unsamflow.pipeline.lock import output_lock
from unsamflow.pipeline.manifest import Manifest
from unsamflow.pipeline.segment import segment_shard
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import MaskStore
from unsamflow.pipeline.store.index import INDEX_NAME, Index, build_index
from unsamflow.pipeline.store.integrity import read_sidecar, sidecar_path, write_sidecar
from unsamflow.pipeline.verify import verify

GRID = ["--segmenter", "plugin_segmenter:make_grid"]
SPEC = SegmenterSpec("plugin_segmenter:make_grid")
SHARDS = [f"shard-{i:05d}-of-00003" for i in range(3)]


def noise_frames(root: Path, seq: str, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / seq).mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / seq / f"{i:03d}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def segment_all(out: Path, manifest: Manifest, shards: int) -> None:
    """manifest.json, shards/ and stores/ (one store per shard) under `out`, as `run` lays them out."""
    from unsamflow.pipeline.shard import write_shards

    manifest.save(out / "manifest.json")
    for sf in write_shards(manifest, shards, out / "shards"):
        segment_shard(str(sf), str(out / "stores" / (sf.stem + ".h5")), SPEC, DeriveConfig().to_dict(), None)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """Three sequences of two frames (c's two differ in size: a bad pair), one shard each, indexed."""
    from unsamflow.pipeline.layouts import scan

    out = tmp_path_factory.mktemp("made")
    for seq, seed in (("a", 0), ("b", 1)):
        noise_frames(out / "data", seq, [(24, 32)] * 2, seed)
    noise_frames(out / "data", "c", [(24, 32), (20, 32)], 2)
    manifest = scan("folder", out / "data")
    segment_all(out, manifest, 3)
    build_index(out / "stores", manifest=manifest)
    return out


@pytest.fixture
def out(made: Path, tmp_path: Path) -> Path:
    """A private copy of `made` (same absolute dataset root, so its provenance still matches)."""
    dst = tmp_path / "o"
    shutil.copytree(made, dst, ignore=shutil.ignore_patterns("data"))
    return dst


def manifest_of(out: Path) -> Manifest:
    return Manifest.load(out / "manifest.json")


def stamp(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


# -- MaskStore.sha256 on a freshly opened store -----------------------------------------------------------


def test_sha256_and_frame_id_on_a_freshly_opened_store(out):
    """Before: AttributeError ('_sha' read before the file was opened)."""
    path = out / "stores" / f"{SHARDS[0]}.h5"
    first = MaskStore(path).sha256(0)
    assert len(first) == 64 and first == MaskStore(path).read(0).sha256
    assert MaskStore(path).sha256("a/001.png") == MaskStore(path).read(1).sha256
    assert MaskStore(path).frame_id(1) == "a/001.png"


# -- 2: an index row must hold the frame asked for -------------------------------------------------------


def edit_index(stores: Path, change) -> None:
    data = json.loads((stores / INDEX_NAME).read_text())
    change(data)
    (stores / INDEX_NAME).write_text(json.dumps(data))


def test_swapped_or_edited_index_rows_are_refused(out):
    """Before: two swapped rows made Index.open('a/000.png') return a/001.png's masks; verify said ok and
    `show` drew the wrong masks, all with status 0."""
    stores = out / "stores"

    def swap(d):
        f = d["frames"]
        f["a/000.png"], f["a/001.png"] = f["a/001.png"], f["a/000.png"]

    edit_index(stores, swap)
    index = Index.load(stores)
    with pytest.raises(StoreError, match=r"maps frame 'a/000.png' to row 1 of shard-00000-of-00003.h5, "
                                         r"which holds frame 'a/001.png'; run `pipeline index"):
        index.open("a/000.png")
    index.close()
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    text = "\n".join(report.lines)
    assert not report.ok, text
    assert "maps frame 'a/000.png' to row 1 of shard-00000-of-00003.h5, but it is at row 0" in text, text
    res = cli(["show", "--stores", str(stores), "--frame", "a/000.png", "--out", str(out / "pics")])
    assert res.exit_code == 2 and "which holds frame 'a/001.png'" in res.output, res.output
    assert not (out / "pics").exists()
    res = cli(["verify", "--stores", str(stores), "--manifest", str(out / "manifest.json"), "--no-hash",
               "-q"])
    assert res.exit_code == 1 and "index.json maps frame" in res.output, res.output

    # One digit changed: the row of another frame of the same store; then one in another store.
    build_index(stores)
    edit_index(stores, lambda d: d["frames"].__setitem__("a/000.png", [0, 1]))
    with pytest.raises(StoreError, match="holds frame 'a/001.png'"):
        Index.load(stores).open("a/000.png")
    edit_index(stores, lambda d: d["frames"].__setitem__("a/000.png", [1, 0]))
    with pytest.raises(StoreError, match="row 0 of shard-00001-of-00003.h5, which holds frame 'b/000.png'"):
        Index.load(stores).store_for("a/000.png")


def test_forged_bad_pair_in_the_index_is_named_by_verify(out):
    """Before: a `bad_pairs` entry added to index.json passed `verify`, and training silently left that
    pair out. The recorded one (c's frames differ in size) stays accepted."""
    stores = out / "stores"
    forged = {"frame1": "a/000.png", "frame2": "a/001.png", "reason": "frame 'a/001.png' is bad: forged"}
    edit_index(stores, lambda d: d["bad_pairs"].append(forged))
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    text = "\n".join(report.lines)
    assert (f"{stores / INDEX_NAME} lists pair 'a/000.png' -> 'a/001.png' as bad (frame 'a/001.png' is bad: "
            "forged), but the stores and the manifest do not: training would leave it out") in text, text
    assert "'c/000.png' -> 'c/001.png' as bad" not in text and not report.ok


@pytest.mark.parametrize("change, why", [
    (lambda d: d["frames"].__setitem__("a/000.png", [-1, 0]), "frame 'a/000.png': shard -1 out of range"),
    (lambda d: d["frames"].__setitem__("a/000.png", [0, -1]), "row -1 out of range"),
    (lambda d: d["frames"].__setitem__("a/000.png", [0, 7]), "row 7 out of range"),
    (lambda d: d["frames"].__setitem__("a/000.png", [9, 0]), "shard 9 out of range 0..2"),
    (lambda d: d["frames"].__setitem__("a/000.png", "0,0"), "is not \\[shard, row\\]"),
    (lambda d: d["frames"].__setitem__("a/000.png", [0, 1.5]), "is not \\[shard, row\\]"),
    (lambda d: d.__setitem__("frames", []), "'frames' is not an object"),
    (lambda d: d["shards"][0].pop("file"), "shard entry 0 has no plain file name"),
    (lambda d: d["shards"][0].__setitem__("file", "../x.h5"), "shard entry 0 has no plain file name"),
    (lambda d: d["shards"][1].__setitem__("frames", "2"), "frames='2' is not a count"),
    (lambda d: d.__setitem__("shards", {}), "'shards' is not a list"),
    (lambda d: d.__setitem__("bad_pairs", [{"frame1": "a"}]), "'bad_pairs' is not a list"),
    (lambda d: d.__setitem__("bad_frames", ["a"]), "'bad_frames' is not an object"),
])
def test_malformed_index_is_one_clear_error(out, change, why):
    """Before: raw KeyError / IndexError / TypeError tracebacks, and shard -1 meant the last shard."""
    stores = out / "stores"
    edit_index(stores, change)
    with pytest.raises(StoreError, match=f"index.json is malformed: .*{why}.*run `pipeline index"):
        Index.load(stores)
    res = cli(["show", "--stores", str(stores), "--out", str(out / "pics")])
    assert res.exit_code == 2 and "is malformed" in res.output and "Traceback" not in res.output, res.output


def test_index_json_that_is_not_an_object(out):
    (out / "stores" / INDEX_NAME).write_text("[1, 2]")
    with pytest.raises(StoreError, match="not an unsamflow index"):
        Index.load(out / "stores")


# -- 3: stores of another manifest are not taken as complete ---------------------------------------------


def test_stores_of_another_manifest_are_refused_naming_what_differs(out, made, tmp_path):
    """Before: `shard --force` with a second manifest, then `segment` into the same output said "already
    complete" and kept the first data set's stores; `verify --manifest <second> --no-hash` said ok."""
    from unsamflow.pipeline.dispatch import plan_shards
    from unsamflow.pipeline.layouts import scan

    second = tmp_path / "data2"  # same ids, other pixels: another data set
    for seq, seed in (("a", 5), ("b", 6)):
        noise_frames(second, seq, [(24, 32)] * 2, seed)
    noise_frames(second, "c", [(24, 32), (20, 32)], 7)
    m2 = scan("folder", second)
    m2.save(tmp_path / "m2.json")
    res = cli(["shard", "--manifest", str(tmp_path / "m2.json"), "--num-shards", "3", "--out",
               str(out / "shards"), "--force"])
    assert res.exit_code == 0, res.output
    before = {p.name: stamp(p) for p in (out / "stores").glob("*.h5")}
    res = cli(["segment", "--shards", str(out / "shards"), "--out", str(out / "stores"), *GRID,
               "--workers", "1", "--no-dashboard"])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith(f"error: shard {SHARDS[0]}.h5 is stale"), line
    assert "manifest sha256" in line and f"dataset root '{made / 'data'}' (this one: '{second}')" in line
    assert all(f"shard {s}.h5 is stale" in line for s in SHARDS) and "--repair" in line, line
    assert {p.name: stamp(p) for p in (out / "stores").glob("*.h5")} == before

    res = cli(["verify", "--stores", str(out / "stores"), "--manifest", str(tmp_path / "m2.json"),
               "--no-hash", "-q"])
    assert res.exit_code == 1 and f"shard {SHARDS[1]}.h5 is stale" in res.output, res.output
    # A hand-edited shard listing other frames is named by its frame ids.
    sf = out / "shards" / f"{SHARDS[0]}.json"
    shard = Manifest.load(sf)
    plan = plan_shards([sf], out / "stores", SPEC, DeriveConfig().to_dict(), repair=True)
    assert [s.name for _, s, _ in plan.todo] == [f"{SHARDS[0]}.h5"]
    shard.meta = {**shard.meta, "manifest_sha256": MaskStore(out / "stores" / f"{SHARDS[0]}.h5").source[
        "manifest_sha256"]}
    shard.root = str(made / "data")
    shard.frames = shard.frames[:1]
    shard.save(sf)
    with pytest.raises(StoreError, match=r"frame ids: 1 frames not in the shard \(e.g. 'a/001.png'\)"):
        plan_shards([sf], out / "stores", SPEC, DeriveConfig().to_dict())


# -- 4b: a flipped bit never reaches HDF5 ----------------------------------------------------------------

# Bit positions in the first 4 KiB of the store made below (deterministic: relative root, fixed pixels).
# Measured on the code before sidecars, over 256 flips (bit 0 of every 16th byte): bytes 2688, 2720 and
# 2752 made HDF5 loop for ever; 2000, 2016 and 2032 gave raw KeyErrors ("message not aligned", ...).
KNOWN_BAD = [2688 * 8, 2720 * 8, 2752 * 8, 2000 * 8, 2016 * 8, 2032 * 8]
FLIPS = KNOWN_BAD + [i * (4096 * 8 // 58) + i % 8 for i in range(58)]

FLIP_SCRIPT = """
import json, sys
from pathlib import Path
import test_integrity as t
print(json.dumps(t.flip_cases(Path(sys.argv[1]), json.loads(sys.argv[2]))))
"""


def flip_cases(work: Path, positions: list[int]) -> list[dict]:
    """Each position: flip that bit of a fresh store's copy, then run verify, index and segment on it."""
    from unsamflow.pipeline.manifest import Frame
    from unsamflow.pipeline.shard import manifest_sha256

    os.chdir(work)
    noise_frames(Path("data"), "s", [(24, 32)] * 3)
    m = Manifest("folder", "data", [Frame(f"s/{i:03d}.png", "s") for i in range(3)])
    m.save(work / "manifest.json")
    shard = Manifest("folder", "data", m.frames, meta={"shard": 0, "num_shards": 1,
                                                      "manifest_sha256": manifest_sha256(m)})
    sf = shard.save(work / "shards" / "shard-00000-of-00001.json")
    pristine = work / "pristine" / "shard-00000-of-00001.h5"
    segment_shard(str(sf), str(pristine), SPEC, DeriveConfig().to_dict(), None)
    data = pristine.read_bytes()
    out = []
    for pos in positions:
        d = work / f"flip-{pos}"
        d.mkdir()
        flipped = bytearray(data)
        flipped[pos // 8] ^= 1 << (pos % 8)
        (d / pristine.name).write_bytes(flipped)
        shutil.copy(sidecar_path(pristine), sidecar_path(d / pristine.name))
        for args in (["verify", "--stores", str(d), "--manifest", str(work / "manifest.json"), "--no-hash",
                      "-q"],
                     ["index", "--stores", str(d)],
                     ["segment", "--shards", str(work / "shards"), "--out", str(d), *GRID, "--workers", "1"]):
            res = cli(args)
            out.append({"pos": pos, "cmd": args[0], "code": res.exit_code, "output": res.output,
                        "exc": repr(res.exception) if not isinstance(res.exception, SystemExit) else None})
    return out


def test_flipped_bits_are_named_corrupt_and_never_hang(tmp_path):
    """64 single-bit flips of a real store: verify, index and segment each end at once with one line
    naming the shard as corrupt. Before: 3 of 256 flips made HDF5 spin for ever in all three commands."""
    proc = subprocess.run([PYTHON, "-c", FLIP_SCRIPT, str(tmp_path), json.dumps(FLIPS)], capture_output=True,
                          text=True, timeout=60, env=TESTS_ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(cases) == 3 * len(FLIPS)
    corrupt = "shard shard-00000-of-00001.h5 is corrupt: its sha256"
    for c in cases:
        where = f"bit {c['pos']}, {c['cmd']}: {c}"
        assert c["exc"] is None and "Traceback" not in c["output"], where
        if c["cmd"] == "verify":
            assert c["code"] == 1 and corrupt in c["output"], where
        else:
            lines = c["output"].strip().splitlines()
            assert c["code"] == 2 and len(lines) == 1 and corrupt in lines[0], where


def test_store_without_checksum_is_unverifiable_until_index_checks_it(out):
    """A store without its sidecar (made before them, or its writer died right after the commit) is never
    opened by verify or segment; `index` reads it in full and records the sidecar."""
    stores = out / "stores"
    store = stores / f"{SHARDS[1]}.h5"
    recorded = read_sidecar(store)
    assert recorded["size"] == store.stat().st_size
    assert json.loads((stores / INDEX_NAME).read_text())["shards"][1]["sha256"] == recorded["sha256"]
    sidecar_path(store).unlink()
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    assert f"shard {SHARDS[1]}.h5 is unverifiable: it has no checksum file {store.name}.sha256.json" in \
        "\n".join(report.lines)
    assert report.counts["frames"] == 4 and list(report.bad_shards) == [store.name]  # the other two read
    res = cli(["segment", "--shards", str(out / "shards"), "--out", str(stores), *GRID, "--workers", "1"])
    assert res.exit_code == 2 and "is unverifiable" in res.output and "--repair" in res.output, res.output
    res = cli(["index", "--stores", str(stores)])
    assert res.exit_code == 0, res.output
    assert read_sidecar(store)["sha256"] == recorded["sha256"]
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    assert report.only_bad_frames, report.lines  # only c's bad pair (frames of different sizes) is left


def test_derive_and_index_never_reseal_a_damaged_store(out):
    """Before: `derive` rewrote a store whose bytes no longer matched its checksum and sealed the damage
    with a new one (a changed predicted_iou came back "ok"); `index`, with the checksum file deleted,
    read the frames, accepted a point outside the image and recorded a new checksum file."""
    stores = out / "stores"
    s0, s1 = stores / f"{SHARDS[0]}.h5", stores / f"{SHARDS[1]}.h5"
    sound = s0.read_bytes()
    with h5py.File(s0, "r+") as f:
        f["masks/predicted_iou"][0] = 0.25  # damaged after its commit: the checksum no longer matches
    damaged, others = stamp(s0), [stamp(s1), stamp(stores / f"{SHARDS[2]}.h5")]
    res = cli(["derive", "--stores", str(stores), "--key-min-h", "10"])
    assert res.exit_code == 2, res.output
    assert f"derive: shard {SHARDS[0]}.h5 is corrupt: " in res.output, res.output
    assert "nothing was re-derived" in res.output and "--repair" in res.output
    assert stamp(s0) == damaged and [stamp(s1), stamp(stores / f"{SHARDS[2]}.h5")] == others
    s0.write_bytes(sound)

    sidecar_path(s1).unlink()
    with h5py.File(s1, "r+") as f:
        f["masks/point_coords"][0] = [500.0, 3.0]  # outside the 24x32 frame
    for args in (["index", "--stores", str(stores)],
                 ["derive", "--stores", str(stores), "--key-min-h", "10"]):
        res = cli(args)
        assert res.exit_code == 2, res.output
        assert f"shard {SHARDS[1]}.h5 has no checksum file and a full read finds it damaged" in res.output
        assert "mask 0: point [500.0, 3.0] is outside the 24x32 (HxW) image" in res.output, res.output
        assert "--repair" in res.output and not sidecar_path(s1).exists()
    assert stamp(s0)[1] == sound


# -- 6: corrupt but openable stores are redone by --repair ------------------------------------------------


def damage_chunk(store: Path, dataset: str = "masks/runs") -> None:
    """Flip a byte in the middle of the first chunk of `dataset` (HDF5 itself still opens the file)."""
    with h5py.File(store, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    data = bytearray(store.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0xFF
    store.write_bytes(data)


def test_damaged_stores_are_refused_by_run_and_exactly_verifys_shards_are_redone(out, made):
    """Before: a store with a damaged chunk counted as complete; `run` then crashed in its pictures stage.
    Shard 0: damaged after commit (checksum differs). Shard 1: damaged as a buggy writer would have
    committed it (checksum matches; only a full read finds it). Shard 2 is sound and stays untouched."""
    stores = out / "stores"
    damage_chunk(stores / f"{SHARDS[0]}.h5")
    damage_chunk(stores / f"{SHARDS[1]}.h5")
    write_sidecar(stores / f"{SHARDS[1]}.h5")
    sound = stamp(stores / f"{SHARDS[2]}.h5")
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    assert sorted(report.bad_shards) == [f"{SHARDS[0]}.h5", f"{SHARDS[1]}.h5"], report.lines
    assert f"shard {SHARDS[1]}.h5, frame 'b/000.png': cannot decode" in report.bad_shards[f"{SHARDS[1]}.h5"]

    # --no-track: the track stage would (rightly) write tracks into the untracked sound store; what is
    # checked here is that the repair re-segments exactly the damaged ones (tracks: tests/test_track.py).
    args = ["run", "--manifest", str(out / "manifest.json"), "--out", str(out), "--shards", "3", *GRID,
            "--workers", "1", "--no-dashboard", "--pictures", "2", "--skip-bad", "--no-hash", "--no-track"]
    res = cli(args)
    assert res.exit_code == 2, res.output
    assert f"error: shard {SHARDS[0]}.h5 is corrupt: its sha256" in res.output and "--repair" in res.output
    assert "pictures" not in res.output

    res = cli([*args, "--repair"])
    assert res.exit_code == 0, res.output
    assert f"repair {SHARDS[0]}.h5: shard {SHARDS[0]}.h5 is corrupt" in res.output, res.output
    assert f"repair {SHARDS[1]}.h5: shard {SHARDS[1]}.h5, frame 'b/000.png': cannot decode" in res.output
    assert "2 written, 1 already complete" in res.output and "[5/6] verify: PROBLEMS" in res.output
    assert stamp(stores / f"{SHARDS[2]}.h5") == sound
    report = verify(stores, manifest_of(out), check_hashes=False, progress=False)
    assert report.only_bad_frames and not report.bad_shards, report.lines
    # `run` indexes with its manifest: the bad pair (c's frames differ in size) is in index.json.
    pairs = json.loads((stores / INDEX_NAME).read_text())["bad_pairs"]
    assert pairs == [{"frame1": "c/000.png", "frame2": "c/001.png",
                      "reason": "frame sizes differ (24x32 vs 20x32, HxW)"}]


def test_changed_source_images_make_their_shard_bad_and_repair_redoes_exactly_it(tmp_path):
    """Before: after frames were replaced in place, `verify` named them but listed no bad shard, so
    `run --repair` redid nothing and exited 1 for ever, and `run --no-hash` exited 0 on stale masks."""
    from unsamflow.pipeline.layouts import scan

    out = tmp_path / "o"
    for seq, seed in (("a", 0), ("b", 1)):
        noise_frames(tmp_path / "data", seq, [(24, 32)] * 2, seed)
    manifest = scan("folder", tmp_path / "data")
    manifest.save(tmp_path / "manifest.json")
    args = ["run", "--manifest", str(tmp_path / "manifest.json"), "--out", str(out), "--shards", "2", *GRID,
            "--workers", "1", "--no-dashboard", "--pictures", "0", "--no-track"]
    res = cli(args)
    assert res.exit_code == 0, res.output
    stores = out / "stores"
    noise_frames(tmp_path / "data", "a", [(24, 32)] * 2, seed=7)  # both frames of `a`, replaced in place
    untouched = stamp(stores / "shard-00001-of-00002.h5")
    changed = "shard-00000-of-00002.h5"
    for extra in ([], ["--no-hash"]):
        res = cli([*args, *extra])
        assert res.exit_code == 1, (extra, res.output)
        assert f"shard {changed}, frame 'a/000.png': source image changed since it was" in res.output
    report = verify(stores, Manifest.load(tmp_path / "manifest.json"), progress=False)
    assert list(report.bad_shards) == [changed], report.lines
    res = cli([*args, "--no-hash", "--repair"])
    assert res.exit_code == 0, res.output
    assert f"repair {changed}: shard {changed}, frame 'a/000.png': source image changed" in res.output
    assert "(and 1 more)" in res.output and "1 written, 1 already complete" in res.output
    assert stamp(stores / "shard-00001-of-00002.h5") == untouched
    res = cli(args)
    assert res.exit_code == 0 and "[5/6] verify: ok" in res.output, res.output


# -- the index command takes the output lock ------------------------------------------------------------


def test_index_takes_the_output_lock_and_sweeps_temps(out):
    stores = out / "stores"
    with output_lock(stores, "pipeline segment"):
        res = cli(["index", "--stores", str(stores)])
    assert res.exit_code == 2 and "is being written by `pipeline segment`" in res.output, res.output
    (stores / f".{SHARDS[0]}.h5.tmp-999999").write_bytes(b"left by a killed writer")
    res = cli(["index", "--stores", str(stores)])
    assert res.exit_code == 0, res.output
    assert not list(stores.glob(".*.tmp-*"))
