"""Hangs, memory, late failures, concurrency: every case has a time limit and a real process where the
failure needs one (subprocesses, real Dask schedulers and workers, real signals, real file limits)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_segment import REPO, VENV_BIN, _start, _stop
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.derive import DeriveConfig
from unsamflow.pipeline.manifest import Frame, Manifest
from unsamflow.pipeline.segment import segment_shard
from unsamflow.pipeline.segmenters.base import SegmenterSpec
from unsamflow.pipeline.store import MaskStore

PYTHON = str(VENV_BIN / "python")
TESTS_ENV = {**os.environ,
             "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def cli(args: list[str]):
    return CliRunner().invoke(main, args)


def pipeline_proc(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """`python -m unsamflow.pipeline ARGS` in its own process, killed (and failed) after `timeout` s."""
    return subprocess.run([PYTHON, "-m", "unsamflow.pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env=kw.pop("env", TESTS_ENV), **kw)


def frames(root: Path, sizes: list[tuple[int, int]], seq: str = "s") -> list[str]:
    """Noise frames of the given (h, w) sizes under root/seq; returns their ids."""
    rng = np.random.default_rng(0)
    (root / seq).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / seq / f"{i:03d}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        ids.append(f"{seq}/{i:03d}.png")
    return ids


def one_shard(root: Path, ids: list[str], where: Path) -> Path:
    m = Manifest("folder", str(root), [Frame(i, i.split("/")[0]) for i in ids],
                 meta={"shard": 0, "num_shards": 1})
    return m.save(where / "shard-00000-of-00001.json")


# -- 4a: a file name that is not UTF-8 ---------------------------------------------------------------


def test_non_utf8_file_name_is_refused_at_manifest_and_run_ends(tmp_path):
    root = tmp_path / "data"
    frames(root, [(16, 16)])
    bad = os.fsencode(root / "s") + b"/caf\xe9.png"  # latin-1 bytes: not UTF-8
    with open(bad, "wb") as f:
        f.write((root / "s" / "000.png").read_bytes())
    res = cli(["manifest", "--layout", "folder", "--root", str(root), "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 2, res.output
    assert "not valid UTF-8" in res.output and "caf\\xe9.png" in res.output
    assert not (tmp_path / "m.json").exists()
    # Before: `run` hung for ever in as_completed (the worker's connection died on the progress event).
    proc = pipeline_proc(["run", "--layout", "folder", "--root", str(root), "--out", str(tmp_path / "o"),
                          "--workers", "1", "--no-dashboard"], timeout=120)
    assert proc.returncode == 2 and "not valid UTF-8" in proc.stderr, proc.stderr
    # A manifest written elsewhere (JSON escapes the bytes as lone surrogates) is refused on load too.
    data = {"format": "unsamflow-manifest", "version": 1, "layout": "folder", "root": str(root), "meta": {},
            "frames": [{"id": "s/caf\udce9.png", "sequence": "s"}], "pairs": []}
    (tmp_path / "hand.json").write_text(json.dumps(data))
    res = cli(["shard", "--manifest", str(tmp_path / "hand.json"), "--num-shards", "1", "--out",
               str(tmp_path / "sh")])
    assert res.exit_code == 2 and "not valid UTF-8" in res.output, res.output


# -- 4c / 4d: every wait for the cluster has a time limit ---------------------------------------------


def test_slurm_without_sbatch_is_refused_not_a_hang(tmp_path):
    pytest.importorskip("dask_jobqueue")
    root = tmp_path / "data"
    shard = one_shard(root, frames(root, [(16, 16)]), tmp_path / "shards")
    env = {**TESTS_ENV, "PATH": str(VENV_BIN)}  # no sbatch here
    proc = pipeline_proc(["segment", "--shards", str(shard), "--out", str(tmp_path / "st"), "--slurm-jobs",
                          "1", "--worker-timeout", "5"], timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "sbatch" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "st" / "shard-00000-of-00001.h5").exists()


def test_failed_sbatch_ends_the_run_at_once_with_its_message(tmp_path):
    """Before: jobqueue logged a traceback per try and the client waited the whole --worker-timeout (once
    ending in `AssertionError: Status.created` from cluster.close()). Now the first failed submission
    ends the run with sbatch's own words; and a SLURM cluster without TLS is announced loudly."""
    pytest.importorskip("dask_jobqueue")
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid "
                                  "account or account/partition combination specified' >&2\nexit 1\n")
    for name in ("squeue", "scancel"):
        (stubs / name).write_text("#!/bin/sh\nexit 0\n")
    for f in stubs.iterdir():
        f.chmod(0o755)
    root = tmp_path / "data"
    shard = one_shard(root, frames(root, [(16, 16)]), tmp_path / "shards")
    env = {**TESTS_ENV, "PATH": f"{stubs}:{VENV_BIN}:/usr/bin:/bin"}
    proc = pipeline_proc(["segment", "--shards", str(shard), "--out", str(tmp_path / "st"), "--slurm-jobs",
                          "2", "--worker-timeout", "600"], timeout=120, env=env)  # ends long before
    assert proc.returncode == 2, proc.stderr
    assert ("error: sbatch failed, so no SLURM job can start: sbatch: error: Batch job submission failed: "
            "Invalid account") in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr, proc.stderr
    assert proc.stderr.count("WARNING: the SLURM cluster runs without TLS") == 1, proc.stderr
    assert "--tls-auto" in proc.stderr


def test_no_worker_or_every_worker_dead_fails_with_a_message(tmp_path):
    root = tmp_path / "data"
    shard = one_shard(root, frames(root, [(16, 16)] * 3), tmp_path / "shards")
    sched_file = tmp_path / "scheduler.json"
    procs = [_start([str(VENV_BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sched_file)], tmp_path / "sched.log")]
    try:
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        base = ["segment", "--shards", str(shard), "--scheduler", address, "--worker-timeout", "3",
                "--retries", "0", "--segmenter", "plugin_segmenter:make_blocking",
                "-o", f"reached={tmp_path / 'reached'}", "-o", f"release={tmp_path / 'release'}",
                "-o", "block_at=2"]
        # No worker ever joins: an error after --worker-timeout, not an endless wait.
        t0 = time.monotonic()
        proc = pipeline_proc([*base, "--out", str(tmp_path / "a")], timeout=90)
        assert proc.returncode == 2 and "no Dask worker joined" in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 60
        # A worker (no nanny to restart it) dies inside the shard: the client reports it and ends.
        worker = [str(VENV_BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                  "--no-dashboard", "--host", "127.0.0.1"]
        procs.append(_start(worker, tmp_path / "worker.log", env=TESTS_ENV))
        client = subprocess.Popen([PYTHON, "-m", "unsamflow.pipeline", *base, "--out", str(tmp_path / "b")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TESTS_ENV)
        try:
            deadline = time.monotonic() + 90
            while not (tmp_path / "reached").exists() and time.monotonic() < deadline:
                assert client.poll() is None, client.communicate()
                time.sleep(0.05)
            os.killpg(procs[1].pid, signal.SIGKILL)  # the worker, mid-shard
            out, err = client.communicate(timeout=90)
        finally:
            client.kill()
        assert client.returncode == 2, out + err
        assert "every shard failed" in err and "no Dask worker alive for 3 s" in err, out + err
        assert not list((tmp_path / "b").glob("*.h5"))
    finally:
        _stop(procs)


# -- 5: one big frame never loses its shard ------------------------------------------------------------


def test_frame_over_the_memory_budget_is_bad_and_its_shard_goes_on(tmp_path):
    """50 full-frame masks: 3 MB for a 300x200 frame (fits 8 MiB), 24 MB for a 800x600 one (does not).
    Before: every mask stacked at full size, and one MemoryError lost the whole shard."""
    root = tmp_path / "data"
    ids = frames(root, [(200, 300), (600, 800), (200, 300)])
    shard = one_shard(root, ids, tmp_path / "shards")
    spec = SegmenterSpec("plugin_segmenter:make_many", {"n": 50})
    stats = segment_shard(str(shard), str(tmp_path / "st.h5"), spec, DeriveConfig().to_dict(), 8 << 20)
    assert stats["frames"] == 2 and list(stats["bad"]) == [ids[1]], stats
    reason = stats["bad"][ids[1]]
    assert "out of memory budget" in reason and "600x800 (HxW)" in reason and "50 masks" in reason
    assert "8.0 MiB" in reason and "--frame-memory" in reason
    with MaskStore(tmp_path / "st.h5") as ms:
        assert ms.frame_ids == [ids[0], ids[2]] and ms.bad_frames == {ids[1]: reason}
        assert ms.read(0).masks.shape == (50, 200, 300)


def test_many_masks_are_processed_within_the_budget_without_stacking(tmp_path):
    """400 small masks of a 800x600 frame: 192 MB stacked at full size, 40 kB as crops. With a 16 MiB
    budget the frame is written, and Python's peak allocation stays under the budget (measured: 7.3 MiB,
    most of it the frame's fixed cost: image, label maps)."""
    root = tmp_path / "data"
    ids = frames(root, [(600, 800)])
    shard = one_shard(root, ids, tmp_path / "shards")
    spec = SegmenterSpec("plugin_segmenter:make_many", {"n": 400, "block": 10})
    budget = 16 << 20
    # Warm up on a tiny frame first, so that first-time imports (h5py, the plug-in) are not counted.
    warm = one_shard(root, frames(root, [(6, 8)], "warm"), tmp_path / "warm")
    segment_shard(str(warm), str(tmp_path / "warm.h5"), spec, DeriveConfig().to_dict(), budget)
    tracemalloc.start()
    try:
        stats = segment_shard(str(shard), str(tmp_path / "st.h5"), spec, DeriveConfig().to_dict(), budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["frames"] == 1 and not stats["bad"], stats
    assert stats["masks"] == 400
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB over the {budget / 2**20:.0f} MiB budget"
    with MaskStore(tmp_path / "st.h5") as ms:
        fm = ms.read(0)
        assert fm.masks.shape == (400, 600, 800) and fm.masks[:, :10, :10].any(axis=(1, 2)).sum() >= 1
        assert (fm.area == 100).all()


def test_graph_frame_over_the_budget_is_refused_before_segmenting_it(tmp_path):
    """`graph` declares its peak (peak_bytes): a 2000x2000 frame over a 64 MiB budget is bad before the
    segmenter runs, the small frames around it are written, and Python's peak allocation stays under the
    budget. Before: the budget was applied to the crops after the call, whose full-frame masks had
    already taken N x H x W bytes (10 GB for a 4000x4000 frame)."""
    root = tmp_path / "data"
    ids = frames(root, [(60, 80), (2000, 2000), (60, 80)])
    shard = one_shard(root, ids, tmp_path / "shards")
    spec = SegmenterSpec("graph", {})
    budget = 64 << 20
    warm = one_shard(root, frames(root, [(6, 8)], "warm"), tmp_path / "warm")  # imports not counted
    segment_shard(str(warm), str(tmp_path / "warm.h5"), spec, DeriveConfig().to_dict(), budget)
    tracemalloc.start()
    try:
        stats = segment_shard(str(shard), str(tmp_path / "st.h5"), spec, DeriveConfig().to_dict(), budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats["frames"] == 2 and list(stats["bad"]) == [ids[1]], stats
    reason = stats["bad"][ids[1]]
    assert "segmenter 'graph' needs about" in reason and "2000x2000 (HxW)" in reason, reason
    assert "64.0 MiB" in reason and "--frame-memory" in reason
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB over the {budget / 2**20:.0f} MiB budget"


def test_graph_run_lengths_equal_its_masks_and_its_peak_is_within_its_estimate(shipped_data):
    """`graph` makes one mask at a time from its box (segment_compact); the records equal the bool masks
    of __call__, and the measured peak of a real KITTI frame stays under peak_bytes."""
    from unsamflow.pipeline.images import read_rgb
    from unsamflow.pipeline.masks import rle_decode
    from unsamflow.pipeline.segmenters.graph import GraphSegmenter

    path = sorted((shipped_data / "kitti2015").rglob("image_2/*_10.png"))[0]
    rgb = read_rgb(path, "f")[0]
    seg = GraphSegmenter()
    full = seg(rgb)
    tracemalloc.start()
    try:
        compact = seg.segment_compact(rgb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(full) == len(compact) > 10
    for a, b in zip(full, compact, strict=True):
        assert np.array_equal(a["segmentation"], rle_decode(b["segmentation"]))
        assert int(a["segmentation"].sum()) == a["area"] == b["area"] and a["bbox"] == b["bbox"]
    assert peak < seg.peak_bytes(rgb.shape[:2]), (peak, seg.peak_bytes(rgb.shape[:2]))


def test_a_frame_that_fails_in_the_segmenter_is_bad_alone(tmp_path):
    root = tmp_path / "data"
    ids = frames(root, [(20, 30), (20, 40), (20, 30)])
    shard = one_shard(root, ids, tmp_path / "shards")
    for fail in ("MemoryError", "RuntimeError"):
        spec = SegmenterSpec("plugin_segmenter:make_many", {"n": 3, "fail_width": 40, "fail": fail})
        stats = segment_shard(str(shard), str(tmp_path / f"{fail}.h5"), spec, DeriveConfig().to_dict(), None)
        assert stats["frames"] == 2 and list(stats["bad"]) == [ids[1]], stats
        reason = stats["bad"][ids[1]]  # our words for MemoryError (HxW); the plug-in's own for RuntimeError
        assert fail in reason and ("20x40 (HxW)" if fail == "MemoryError" else "40x20") in reason


def test_when_every_shard_fails_the_run_says_so_with_the_first_reason(tmp_path):
    root = tmp_path / "data"
    frames(root, [(20, 30)] * 2, "a")
    frames(root, [(20, 30)] * 2, "b")
    out = tmp_path / "o"
    proc = pipeline_proc(["run", "--layout", "folder", "--root", str(root), "--out", str(out),
                          "--shards", "2", "--workers", "1", "--no-dashboard", "--retries", "0",
                          "--pictures", "0",
                          "--segmenter", "plugin_segmenter:make_many", "-o", "fail_width=-1",
                          "-o", "fail=RuntimeError"], timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "every shard failed (2 of 2)" in proc.stderr and "plug-in failure" in proc.stderr, proc.stderr
    assert "no mask stores" not in proc.stdout + proc.stderr
    assert "dashboard" not in proc.stdout + proc.stderr  # --no-dashboard: no link printed either


# -- 7: late or unclear failures --------------------------------------------------------------------------


def test_bad_segmenter_options_fail_before_anything_is_written(tmp_path):
    from unsamflow.pipeline.segmenters.sam import write_tiny_sam_checkpoint

    root = tmp_path / "data"
    frames(root, [(16, 16)])
    ckpt = write_tiny_sam_checkpoint(tmp_path / "tiny.pth")
    base = ["run", "--layout", "folder", "--root", str(root), "--workers", "1", "--no-dashboard"]
    cases = [
        (["-o", "sigma=abc"], "option sigma must be a number"),
        (["--checkpoint", str(ckpt), "--model-type", "vit_b"], "it is a vit_tiny checkpoint"),
        (["--checkpoint", str(ckpt), "--model-type", "vit_x"], "unknown model_type 'vit_x'"),
        (["--scheduler", "notanaddress"], "is not a Dask scheduler address"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = cli([*base, "--out", str(out), *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert res.output.count("\n") <= 2, res.output  # one line, no traceback
        assert not (out / "manifest.json").exists() and not (out / "shards").exists()


def test_option_values_and_the_scheduler_are_checked_before_anything_is_written(tmp_path):
    """Before: these were refused only after the manifest and the shards were written (option values by
    every shard's worker; the unreachable scheduler after a 30 s wait)."""
    root = tmp_path / "data"
    frames(root, [(16, 16)])
    base = ["run", "--layout", "folder", "--root", str(root), "--workers", "1", "--no-dashboard"]
    cases = [
        (["-o", "scales=[3,2,1]"], "scales must be positive and strictly increasing, got [3.0, 2.0, 1.0]"),
        (["-o", "sigma=-1"], "graph segmenter: sigma must be >= 0, got -1"),
        (["--scheduler", "tls://127.0.0.1:1"], "speaks TLS, but no TLS files are set"),
        (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach Dask scheduler at tcp://127.0.0.1:1"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = cli([*base, "--out", str(out), *extra])
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert not out.exists(), (extra, sorted(p.name for p in out.iterdir()))
    shard = one_shard(root, ["s/000.png"], tmp_path / "shards")
    res = cli(["segment", "--shards", str(shard), "--out", str(tmp_path / "stores"), "-o", "sigma=-1"])
    assert res.exit_code == 2 and "sigma must be >= 0" in res.output and not (tmp_path / "stores").exists()


def test_manifest_with_wrong_types_is_named(tmp_path):
    data = {"format": "unsamflow-manifest", "version": 1, "layout": "folder", "root": str(tmp_path),
            "meta": {}, "frames": [{"id": 5, "sequence": "s"}], "pairs": []}
    (tmp_path / "m.json").write_text(json.dumps(data))
    res = cli(["shard", "--manifest", str(tmp_path / "m.json"), "--num-shards", "1", "--out",
               str(tmp_path / "sh")])
    assert res.exit_code == 2 and "frames[0].id must be a string, got 5" in res.output, res.output


def test_pictures_of_frames_without_masks(tmp_path):
    from unsamflow.pipeline.show import frame_picture, label_colours

    assert label_colours(0).shape == (0, 3)
    for h, w in ((1, 1), (48, 64)):
        image = np.zeros((h, w, 3), np.uint8)
        pic = frame_picture(image, np.zeros((0, h, w), bool), np.zeros((0, 4)), np.zeros((h, w), np.int32),
                            np.zeros(0, np.int64), "s/black.png")
        assert pic.shape[0] == h + 28 and pic.shape[1] == 3 * w
    # End to end: an all-black frame and a 1x1 frame through `run` and its pictures stage.
    root = tmp_path / "data"
    for seq in ("a", "b"):
        (root / seq).mkdir(parents=True)
    cv2.imwrite(str(root / "a" / "black.png"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(root / "b" / "tiny.png"), np.full((1, 1, 3), 200, np.uint8))
    res = cli(["run", "--layout", "folder", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
               "--shards", "1", "--workers", "1", "--no-dashboard", "--pictures", "2"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o" / "pictures").glob("*.png"))) == 2


def test_run_does_not_suggest_a_force_option_it_lacks(tmp_path):
    from unsamflow.pipeline.layouts import scan
    from unsamflow.pipeline.shard import write_shards

    root = tmp_path / "data"
    frames(root, [(16, 16)] * 2, "a")
    frames(root, [(16, 16)] * 2, "b")
    out = tmp_path / "o"
    manifest = scan("folder", root)
    manifest.save(out / "manifest.json")
    write_shards(manifest, 2, out / "shards")
    res = cli(["run", "--layout", "folder", "--root", str(root), "--out", str(out), "--shards", "1",
               "--workers", "1", "--no-dashboard"])
    assert res.exit_code == 2, res.output
    assert "--force" not in res.output and "--shards" in res.output, res.output


def test_ctrl_c_is_one_line(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it, while a worker is inside a
    shard. Before: ~30 lines of KeyboardInterrupt tracebacks from the workers."""
    root = tmp_path / "data"
    frames(root, [(16, 16)] * 3)
    proc = subprocess.Popen(
        [PYTHON, "-m", "unsamflow.pipeline", "run", "--layout", "folder", "--root", str(root), "--out",
         str(tmp_path / "o"), "--shards", "1", "--workers", "2", "--no-dashboard",
         "--segmenter", "plugin_segmenter:make_blocking", "-o", f"reached={tmp_path / 'reached'}",
         "-o", f"release={tmp_path / 'release'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TESTS_ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "reached").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        (tmp_path / "release").touch()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "KeyboardInterrupt" not in err and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("segment:")]
    assert len(lines) <= 3, err
    assert not list((tmp_path / "o" / "stores").glob("*.h5"))


# -- 8: one writer per output directory; no temporary file outlives its writer ------------------------------

HOLD = """
import os, sys, time
from pathlib import Path
from unsamflow.pipeline.lock import output_lock
with output_lock(Path(sys.argv[1]), "test holder"):
    if sys.argv[2] == "orphan":  # the holder dies; a child it forked keeps the lock file open
        if os.fork() == 0:
            time.sleep(120)
            os._exit(0)
        print("locked", flush=True)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(directory: Path, mode: str) -> subprocess.Popen:
    p = subprocess.Popen([PYTHON, "-c", HOLD, str(directory), mode], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    import socket

    root = tmp_path / "data"
    frames(root, [(16, 16)])
    out = tmp_path / "o"
    holder = _hold(out, "hold")
    try:
        args = ["run", "--layout", "folder", "--root", str(root), "--out", str(out), "--workers", "1",
                "--no-dashboard", "--pictures", "0"]
        res = cli(args)
        assert res.exit_code == 2, res.output
        assert f"pid {holder.pid} on host {socket.gethostname()}" in res.output
        assert "test holder" in res.output
        assert not (out / "manifest.json").exists()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    res = cli(args)  # the kernel released the dead holder's lock
    assert res.exit_code == 0, res.output


def test_lock_of_a_dead_holder_kept_by_its_orphan_is_taken_over(tmp_path):
    from unsamflow.pipeline.lock import output_lock

    out = tmp_path / "o"
    holder = _hold(out, "orphan")
    holder.wait(timeout=30)
    try:
        with output_lock(out, "test") as path:  # the orphan still holds the old file's flock
            assert json.loads(path.read_text())["pid"] == os.getpid()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_killed_derive_leaves_no_temp_and_full_disk_leaves_no_temp(tmp_path):
    from unsamflow.pipeline.store import StoreWriter

    stores = tmp_path / "stores"
    with StoreWriter(stores / "shard-00000-of-00001.h5", segmenter={"name": "t"},
                     derive_config=DeriveConfig().to_dict(), source={}) as w:
        w.add_bad("s/x.png", "test")
    # What a SIGKILLed derive leaves: its store-sized temporary, named after a pid that is gone.
    dead = stores / ".shard-00000-of-00001.h5.tmp-999999999"
    dead.write_bytes(b"\0" * 100_000)
    res = cli(["derive", "--stores", str(stores), "--key-min-h", "10"])
    assert res.exit_code == 0, res.output
    assert not dead.exists() and "removed .shard-00000-of-00001.h5.tmp-999999999" in res.output
    # A full disk while `index` writes index.json (a file-size limit makes the write fail for real).
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    proc = pipeline_proc(["index", "--stores", str(stores)], timeout=60, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert "index.json" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in stores.iterdir()) == [".unsamflow.lock", "shard-00000-of-00001.h5",
                                                         "shard-00000-of-00001.h5.sha256.json"]
    assert sys.platform.startswith("linux")


def test_full_disk_stops_the_run_once_without_retries_and_keeps_complete_stores(tmp_path):
    """A real full disk: a 160 KiB tmpfs (room for two 64 KiB stores) in a private mount namespace
    (`unshare`, no root needed). Before: Dask retried every shard that hit it, ~30 tracebacks and
    failed shards without saying why. Now: no retry, dispatching stops, one summary line naming the
    disk and what the rest needs; the two complete stores stay, and once there is room the next run
    does only the rest."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    root = tmp_path / "data"
    ids = [i for s in range(4) for i in frames(root, [(64, 96)] * 4, f"s{s}")]
    m = Manifest("folder", str(root), [Frame(i, i.split("/")[0]) for i in ids])
    m.save(tmp_path / "m.json")
    assert cli(["shard", "--manifest", str(tmp_path / "m.json"), "--num-shards", "4",
                "--out", str(tmp_path / "shards")]).exit_code == 0
    disk = tmp_path / "disk"
    disk.mkdir()
    seg = (f"{PYTHON} -m unsamflow.pipeline segment --shards {tmp_path / 'shards'} --out {disk}/st "
           "--workers 1 --no-dashboard -q")
    script = (f"mount -t tmpfs -o size=160k none {disk} || exit 99; {seg}; echo rc=$?; ls -a {disk}/st; "
              f"mount -o remount,size=1m {disk} && {seg} && echo second=ok")
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], env=TESTS_ENV,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {proc.stderr.strip()}")
    out = proc.stdout + proc.stderr
    first, second = proc.stdout.split("rc=")
    assert second.startswith("1"), out
    assert "Traceback" not in out and "Compute Failed" not in out and "Errno" not in out, out
    assert first.count("no space left on") == 2, out  # the failed shard, and the one summary line
    assert f"stopped: no space left on {disk}/st (" in first and "the 2 complete stores are kept" in first
    assert "2 shards not written need about" in first and "(2 written, 0 already complete, 1 failed)" in first
    listing = second.split("shards:")[0]
    assert listing.count(".h5.sha256.json") == 2 and ".tmp-" not in listing, out
    assert "(2 written, 2 already complete, 0 failed)" in second and "second=ok" in second, out


def test_sam_frame_over_the_budget_is_refused_before_the_generator_runs(tmp_path):
    """SAM's full-resolution batch (points_per_batch x 3 float32 logits of H x W) is what an 8000x8000
    frame dies of; its estimate is checked before the call. Its run-length output equals its masks."""
    from unsamflow.pipeline.errors import BadFrameError
    from unsamflow.pipeline.masks import CropMasks
    from unsamflow.pipeline.segment import frame_masks, segment_frame
    from unsamflow.pipeline.segmenters import build_segmenter
    from unsamflow.pipeline.segmenters.sam import write_tiny_sam_checkpoint

    options = {"checkpoint": str(write_tiny_sam_checkpoint(tmp_path / "t.pth")), "model_type": "vit_tiny",
               "device": "cpu", "points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    spec = SegmenterSpec("sam", options)
    seg = build_segmenter(spec)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    need = seg.peak_bytes((48, 64))
    assert need == 8 * 64 * 3 * 48 * 64
    with pytest.raises(BadFrameError, match="needs about .* over the per-frame budget"):
        segment_frame(seg, image, "s/f.png", need - 1, spec)
    raw = segment_frame(seg, image, "s/f.png", need + (1 << 20), spec)
    records, masks = frame_masks(raw, (48, 64), "s/f.png", need + (1 << 20), spec, check=False)
    full = seg(image)
    assert len(full) == len(masks) > 0 and "segmentation" not in records[0]
    assert np.array_equal(CropMasks.from_records(full, (48, 64)).to_stack(), masks.to_stack())
