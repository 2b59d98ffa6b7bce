"""The GPU check: its CPU smoke run end to end (so the script cannot rot between GPU windows), a measurement
that fails, dies or hangs recorded while the others run, and the wheel set for the bare GPU machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_cpu_smoke_runs_the_whole_script_and_writes_every_figure(tmp_path):
    from benchmarks.gpu_measures import MEASURES

    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(SCRIPT), "--cpu-smoke", "--out", str(out), "--wheels", str(tmp_path / "none")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"log.txt", "cuda_tests.txt", "results.json", "results.md",
                                               "learning.png"}  # fmt: skip
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "cpu-smoke" and doc["notes"]["install"].startswith(("pip", "link"))
    # the CUDA tests ran and skipped, each with its reason
    tests = doc["cuda_tests"]
    assert tests["exit_code"] == 0 and "skipped" in tests["summary"] and "passed" not in tests["summary"]
    assert tests["skipped"] and all("needs a CUDA device" in s for s in tests["skipped"])
    ms = doc["measures"]
    assert list(ms) == list(MEASURES)
    assert not [n for n, r in ms.items() if "error" in r], {n: r.get("error") for n, r in ms.items()}
    f = {n: r["figures"] for n, r in ms.items()}
    assert f["env"]["unsamflow_from"].endswith("site/unsamflow")  # the copy the script installed
    assert f["train_fp32"]["s_per_step"] > 0 and 0 < f["train_fp32"]["fraction_network"] <= 1
    assert all(f[v] == {"skipped": "CUDA only: skipped on CPU"} for v in ms if v.startswith("train_bf16"))
    assert f["correlation"]["levels"][0]["max_abs_diff"] < 1e-4
    assert f["sam"]["rows"] and "kitti_s_per_frame" in f["sam"]["rows"][0]
    assert f["pipeline"]["frames"] == 2 and f["pipeline"]["segmenter_s"] > 0
    held = f["learning"]["heldout"]
    assert held.pop("picture") == "learning.png: the first held-out pair, model over dis"
    assert set(held) == {"model", "zero", "dis"} and all(math.isfinite(h["epe"]) for h in held.values())
    md = (out / "results.md").read_text()
    assert "## Training step" in md and "| fp32 |" in md and "CUDA tests" in md


def _ok(ctx):
    return {"value": 1.0}


def _boom(ctx):
    raise ValueError("bad figure")


def _dies(ctx):
    os._exit(3)


def _hangs(ctx):
    time.sleep(600)


def _saves_then_hangs(ctx):
    ctx.save_partial({"rows": [{"model": "first of two"}]})
    time.sleep(600)


def test_failing_dying_and_hanging_measurements_are_recorded_and_the_others_run(tmp_path, monkeypatch):
    from benchmarks import gpu_check, gpu_measures

    fake = {"first": ("ok", 10, _ok), "boom": ("raises", 10, _boom), "dies": ("exits", 10, _dies),
            "hangs": ("hangs", 1, _hangs), "after": ("ok again", 10, _ok),
            "stuck": ("hangs", 60, _saves_then_hangs), "late": ("no time", 10, _ok)}  # fmt: skip
    monkeypatch.setattr(gpu_measures, "MEASURES", fake)
    monkeypatch.setattr(gpu_check, "MEASURES", fake)
    monkeypatch.setattr(gpu_check, "MIN_SLOT_S", 1.0)
    # a hanging one is given 1.5 x its planned seconds on a "GPU" run, or what is left of the budget, then
    # killed with its process group; past the budget nothing starts
    t0 = time.perf_counter()
    rc = gpu_check.main(["--out", str(tmp_path / "out"), "--budget", "8", "--work", str(tmp_path / "w")])
    assert time.perf_counter() - t0 < 30
    assert rc == 1
    ms = json.loads((tmp_path / "out" / "results.json").read_text())["measures"]
    assert ms["first"]["figures"] == {"value": 1.0} and ms["after"]["figures"] == {"value": 1.0}
    assert ms["boom"]["error"] == "ValueError: bad figure" and "raise ValueError" in ms["boom"]["traceback"]
    assert "exit code 3" in ms["dies"]["error"]
    assert ms["hangs"]["error"].startswith("timed out after 2 s")
    assert ms["stuck"]["error"].startswith("timed out after") and ms["stuck"]["seconds"] < 8
    assert ms["stuck"]["figures"] == {"rows": [{"model": "first of two"}]}  # what it had saved is kept
    assert ms["late"]["error"].startswith("not run:")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "error after" in md and "bad figure" in md


def test_the_script_refuses_bad_arguments_and_a_machine_without_cuda(tmp_path):
    for args, msg in ((["--budget", "soon"], "--budget must be whole seconds"), (["--frob"], "unknown")):
        cmd = ["bash", str(SCRIPT), *args, "--out", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 2 and msg in proc.stderr
    if not torch.cuda.is_available():  # the full check on a CPU would take hours: refused
        env = {**os.environ, "PYTHON": sys.executable}
        cmd = ["bash", str(SCRIPT), "--out", str(tmp_path / "out"), "--wheels", str(tmp_path / "none")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and "no CUDA device here" in proc.stdout + proc.stderr
        assert "--cpu-smoke" in proc.stdout + proc.stderr


def test_wheel_set_is_what_the_gpu_machine_lacks_for_python_312():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_wheels
    finally:
        sys.path.pop(0)
    wanted = gpu_wheels.wheel_set()
    # the project's cluster and segmenters, and the pure dependencies the machine lacks ...
    assert {"dask", "distributed", "segment-anything", "sam2", "segment-anything-hq", "tornado", "zict",
            "tblib", "partd", "locket", "hydra-core", "omegaconf", "antlr4-python3-runtime",
            "iopath"} <= set(wanted)  # fmt: skip
    # ... and nothing it has (torch, numpy, click, ...), nor what only older Pythons need
    assert not set(wanted) & gpu_wheels.MACHINE_HAS
    assert "importlib-metadata" not in wanted
    assert all(v for v in wanted.values())
    # the budget: wheels and the tree that travels with them
    tree = gpu_wheels.tree_bytes()
    assert 0 < tree < gpu_wheels.BUDGET
    assert gpu_wheels.check_budget([], gpu_wheels.BUDGET)[0]
    assert not gpu_wheels.check_budget([SCRIPT], gpu_wheels.BUDGET)[0]


def test_time_slots_keep_the_reserves_of_the_measurements_still_to_come():
    from benchmarks.gpu_check import plan
    from benchmarks.gpu_measures import MEASURES, RESERVE_S

    names = list(MEASURES)
    assert names.index("learning") < names.index("train_bf16_compile") == len(names) - 1
    after = names[names.index("sam") + 1:]
    # early: its own cap (1.5 x planned) while plenty is left; late: what is left less both reserves
    assert plan("sam", False, 1000, after) == 1.5 * MEASURES["sam"][1]
    assert plan("sam", False, 300, after) == 300 - RESERVE_S["learning"] - RESERVE_S["train_bf16_compile"]
    # the learning run takes everything but the compile attempt's minute; the compile attempt, the rest
    assert plan("learning", False, 400, ["train_bf16_compile"]) == 400 - RESERVE_S["train_bf16_compile"]
    assert plan("train_bf16_compile", False, 50, []) == 50
    assert plan("sam", False, 100, after) == 0  # nothing left: the driver skips it
    # the smoke run: no reserves, a generous cap per measurement
    assert plan("sam", True, 1000, after) == plan("learning", True, 1000, []) == 120
