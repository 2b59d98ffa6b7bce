"""The segment stage and `pipeline run` end to end: real frames, real HDF5, real Dask clusters."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.cluster import ClusterConfig, open_cluster
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.dispatch import segment_shards
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import MaskStore

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def small_frames(shared_data: Path, dest: Path, n: int = 4, scale: float = 0.4) -> list[Path]:
    """Real judo frames, downscaled so that a test segments them in well under a second each."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted((shared_data / "video" / "judo").glob("*.jpg"))[:n]:
        img = cv2.imread(str(src))
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        p = dest / (src.stem + ".png")
        cv2.imwrite(str(p), img)
        out.append(p)
    return out


def run_cli(args: list[str]):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_run_end_to_end_on_real_frames_with_two_workers(shared_data, tmp_path):
    root = tmp_path / "data"
    small_frames(shared_data, root / "judo", n=4)
    sintel = shared_data / "sintel" / "training" / "clean" / "alley_1"
    (root / "alley").mkdir()
    for f in sorted(sintel.glob("*.png"))[:2]:
        img = cv2.imread(str(f))
        cv2.imwrite(str(root / "alley" / f.name), cv2.resize(img, (512, 218)))
    out = tmp_path / "out"
    args = ["run", "--layout", "folder", "--root", str(root), "--out", str(out), "--shards", "2",
            "--workers", "2", "--no-dashboard", "--pictures", "2"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert "verify: ok" in result.output
    stores = sorted((out / "stores").glob("*.h5"))
    assert len(stores) == 2
    ids = set()
    for s in stores:
        ms = MaskStore(s)
        ids |= set(ms.frame_ids)
        fm = ms.read(0)
        assert fm.masks.shape[0] > 0 and fm.full_seg.shape == fm.masks.shape[1:]
        ms.close()
    assert len(ids) == 6
    assert len(list((out / "pictures").glob("*.png"))) == 2
    # A re-run finds everything complete and leaves the stores untouched.
    mtimes = [s.stat().st_mtime_ns for s in stores]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    assert "0 written, 2 already complete" in result.output
    assert [s.stat().st_mtime_ns for s in stores] == mtimes


def write_bad_inputs(root: Path, good: Path) -> dict[str, str]:
    """One folder of problem images next to readable ones; returns the expected bad ids."""
    seq = root / "mixed"
    seq.mkdir(parents=True)
    img = cv2.imread(str(good))
    cv2.imwrite(str(seq / "a_ok.png"), img)
    cv2.imwrite(str(seq / "b_gray.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(seq / "c_16bit.png"), img.astype(np.uint16) * 257)
    cv2.imwrite(str(seq / "d_rgba.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    (seq / "e_empty.png").write_bytes(b"")
    ok, jpg = cv2.imencode(".jpg", img)
    (seq / "f_truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    (seq / "g_text.png").write_text("not an image")
    return {"mixed/e_empty.png": "empty", "mixed/f_truncated.jpg": "truncated",
            "mixed/g_text.png": "cannot decode"}


def test_bad_frames_are_recorded_and_the_rest_finishes(shared_data, tmp_path):
    [good] = small_frames(shared_data, tmp_path / "src", n=1, scale=0.25)
    bad = write_bad_inputs(tmp_path / "data", good)
    out = tmp_path / "out"
    args = ["run", "--layout", "folder", "--root", str(tmp_path / "data"), "--out", str(out),
            "--shards", "1", "--workers", "1", "--no-dashboard", "--pictures", "0"]
    result = run_cli(args)
    assert result.exit_code == 1, result.output
    for fid, why in bad.items():
        assert fid in result.output and why in result.output
    [store] = (out / "stores").glob("*.h5")
    ms = MaskStore(store)
    assert sorted(ms.bad_frames) == sorted(bad)
    assert sorted(ms.frame_ids) == ["mixed/a_ok.png", "mixed/b_gray.png", "mixed/c_16bit.png",
                                    "mixed/d_rgba.png"]
    ms.close()
    result = run_cli([*args, "--skip-bad"])
    assert result.exit_code == 0, result.output


def test_store_of_another_segmenter_configuration_is_refused(shared_data, tmp_path):
    small_frames(shared_data, tmp_path / "data" / "s", n=1, scale=0.25)
    out = tmp_path / "out"
    base = ["run", "--layout", "folder", "--root", str(tmp_path / "data"), "--out", str(out),
            "--shards", "1", "--workers", "1", "--no-dashboard", "--pictures", "0"]
    assert run_cli(base).exit_code == 0
    result = CliRunner().invoke(main, [*base, "-o", "sigma=1.5"])
    assert result.exit_code != 0
    assert "different segmenters cannot be mixed" in result.output
    assert "shard-00000-of-00001.h5" in result.output


def test_tiny_sam_through_the_real_generator_on_the_cluster(shared_data, tmp_path):
    from unsamflow.pipeline.segmenters.sam import write_tiny_sam_checkpoint

    ckpt = write_tiny_sam_checkpoint(tmp_path / "tiny_sam.pth", seed=0)
    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=1, scale=0.3)
    manifest = Manifest("folder", str(tmp_path / "data"), [Frame(f"judo/{frames[0].name}", "judo")],
                        meta={"shard": 0, "num_shards": 1})
    shard = manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    spec = SegmenterSpec("sam", {"checkpoint": str(ckpt), "model_type": "vit_tiny", "points_per_side": 4,
                                 "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    with open_cluster(ClusterConfig(workers=1, dashboard=None)) as client:
        res = segment_shards([shard], tmp_path / "stores", spec, DeriveConfig().to_dict(), client,
                             progress=False)
    assert res.written == 1 and not res.failed, res.summary()
    ms = MaskStore(tmp_path / "stores" / "shard-00000-of-00001.h5")
    assert ms.segmenter["name"] == "sam"
    assert ms.segmenter["config"]["model_type"] == "vit_tiny"
    fm = ms.read(0)
    assert fm.masks.shape[0] == res.masks > 0
    ms.close()


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)


def _stop(procs: list[subprocess.Popen], grace: float = 10.0) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after `grace` seconds: a loaded
    machine must not turn a slow Dask shutdown into a failed test."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


def test_worker_killed_mid_shard_on_external_cluster(shared_data, tmp_path):
    """Scheduler and worker as separate processes; SIGKILL the worker while it writes a shard.

    The kill point is deterministic: a plug-in segmenter stops at the shard's third frame (two frames
    already in the temporary store) until the test has killed the worker and released it.
    """
    from distributed import Client

    root = tmp_path / "data"
    small_frames(shared_data, root / "judo", n=6, scale=0.25)
    manifest = Manifest("folder", str(root), [Frame(f"judo/{p.name}", "judo")
                                              for p in sorted((root / "judo").glob("*.png"))],
                        meta={"shard": 0, "num_shards": 1})
    shard = manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    reached, release = tmp_path / "reached", tmp_path / "release"
    spec = SegmenterSpec("plugin_segmenter:make_blocking",
                         {"reached": str(reached), "release": str(release), "block_at": 3})
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    procs = [_start([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sched_file)], tmp_path / "sched.log")]
    try:
        for _ in range(100):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(_start([str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--nanny",
                             "--no-dashboard", "--host", "127.0.0.1"], tmp_path / "worker.log", env=env))
        stores = tmp_path / "stores"
        with Client(address) as watcher:
            watcher.wait_for_workers(1, timeout=60)
            killed: dict = {}

            def kill_when_blocked():
                try:
                    deadline = time.monotonic() + 120
                    while not reached.exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    killed["visible_before_kill"] = sorted(p.name for p in stores.glob("*.h5"))
                    killed["temps_before_kill"] = sorted(p.name for p in stores.glob(".*.tmp-*"))
                    pids = watcher.run(os.getpid)
                    for pid in pids.values():
                        os.kill(pid, signal.SIGKILL)
                    killed["pids"] = pids
                except Exception as exc:  # reported by the assertions below, not lost in the thread
                    killed["error"] = repr(exc)
                finally:
                    release.touch()  # the retry (a new worker process) runs through

            import threading

            t = threading.Thread(target=kill_when_blocked, daemon=True)
            t.start()
            with open_cluster(ClusterConfig(scheduler=address)) as client:
                res = segment_shards([shard], stores, spec, DeriveConfig().to_dict(),
                                     client, retries=2, progress=False)
            t.join(timeout=5)
        assert "pids" in killed, f"the worker was never killed: {killed}"
        assert killed["temps_before_kill"], "the worker was killed before it opened its temporary store"
        assert killed["visible_before_kill"] == [], "a partial store must never be visible"
        assert res.written == 1 and not res.failed, res.summary()
        ms = MaskStore(stores / "shard-00000-of-00001.h5")
        assert sorted(ms.frame_ids) == sorted(manifest.frame_ids)  # every frame exactly once
        ms.close()
        assert not list(stores.glob(".*.tmp-*"))
    finally:
        _stop(procs)


def test_segment_cli_reports_unknown_segmenter(tmp_path):
    shard = Manifest("folder", str(tmp_path), [Frame("x.png", "")]).save(tmp_path / "s" / "shard-0.json")
    result = CliRunner().invoke(main, ["segment", "--shards", str(shard), "--out", str(tmp_path / "o"),
                                       "--segmenter", "no-such-thing", "--workers", "1", "--no-dashboard",
                                       "--retries", "0"])
    assert result.exit_code != 0
    assert "no-such-thing" in result.output


def test_run_from_a_config_file_and_missing_frames_are_bad(shared_data, tmp_path):
    """A YAML config drives `run`; a frame list naming a missing file records it as bad."""
    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=1, scale=0.25)
    manifest = Manifest("folder", str(tmp_path / "data"),
                        [Frame(f"judo/{frames[0].name}", "judo"), Frame("judo/gone.png", "judo")])
    manifest.save(tmp_path / "list.json")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"manifest: {tmp_path / 'list.json'}\nout: {tmp_path / 'out'}\nshards: 1\n"
                   "workers: 1\ndashboard: false\npictures: 1\nskip_bad: true\n")
    result = run_cli(["run", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "judo/gone.png" in result.output and "file not found" in result.output
    [store] = (tmp_path / "out" / "stores").glob("*.h5")
    assert list(MaskStore(store).bad_frames) == ["judo/gone.png"]
    bad = CliRunner().invoke(main, ["run", "--config", str(cfg), "--no-such"])
    assert bad.exit_code != 0
    cfg.write_text("shardz: 3\n")
    bad = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert bad.exit_code != 0 and "unknown keys ['shardz']" in bad.output


def test_third_party_segmenter_by_module_factory(shared_data, tmp_path):
    """A plug-in runs on the cluster like a built-in; malformed records are refused, named."""
    frames = small_frames(shared_data, tmp_path / "data" / "judo", n=2, scale=0.25)
    manifest = Manifest("folder", str(tmp_path / "data"), [Frame(f"judo/{p.name}", "judo") for p in frames],
                        meta={"shard": 0, "num_shards": 1})
    shard = manifest.save(tmp_path / "shards" / "shard-00000-of-00001.json")
    good = SegmenterSpec("plugin_segmenter:make_grid", {"k": 3})
    with open_cluster(ClusterConfig(workers=1, dashboard=None)) as client:
        res = segment_shards([shard], tmp_path / "stores", good, DeriveConfig().to_dict(), client,
                             progress=False)
        assert res.written == 1 and res.masks == 18, res.summary()
        ms = MaskStore(tmp_path / "stores" / "shard-00000-of-00001.h5")
        assert ms.segmenter["name"] == "grid" and ms.segmenter["config"] == {"k": 3}
        assert ms.read(0).full_seg.max() == 8
        ms.close()
        # the same shard again on the same client, into another folder: a run of its own, not the
        # first run's cached result (Dask answers a submit whose key it still holds with that result)
        again = segment_shards([shard], tmp_path / "again", good, DeriveConfig().to_dict(), client,
                               progress=False)
        assert again.written == 1 and (tmp_path / "again" / "shard-00000-of-00001.h5").is_file()
        bad = SegmenterSpec("plugin_segmenter:make_grid", {"lie_about_area": True})
        res = segment_shards([shard], tmp_path / "bad", bad, DeriveConfig().to_dict(), client,
                             retries=0, progress=False)
    assert res.written == 0
    [err] = res.failed.values()
    assert "plugin_segmenter:make_grid" in err and "area" in err
    assert not list((tmp_path / "bad").glob("*.h5"))
