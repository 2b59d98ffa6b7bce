"""The GPU check's measurements under one deadline (run by scripts/gpu_check.sh after its install and its
CUDA tests): every figure of benchmarks/gpu_measures.py into OUT/results.json and OUT/results.md.

Each measurement runs in a forked process of its own (torch is imported once, here, and CUDA is never
touched here: is_available goes through NVML, which keeps forks usable), in a process group of its own,
with a time limit: one that fails, runs out of memory, breaks its CUDA context or hangs is recorded with
its error (and the figures it had saved so far) and the next one runs. Should CUDA refuse a forked
process, the rest run in spawned ones (`--start-method spawn` asks for that from the start). The results
are rewritten after every measurement, so a run stopped from outside keeps what it had. Time: each
measurement gets 1.5 x its planned seconds, less the reserves of those still to come; the learning run
gets what is left; nothing starts past the deadline.

Run: python -m benchmarks.gpu_check --out DIR --budget SECONDS [--cpu-smoke] [--only a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch.cuda.is_available() without cuInit

import torch  # noqa: E402  (imported once here: the forked measurements share it)

from benchmarks.gpu_measures import MEASURES, OPEN_ENDED, RESERVE_S, Ctx, run_one  # noqa: E402

# Imported here once, before any fork, so that no measurement pays for them again (seconds each on a
# small CPU). None of them starts a thread or touches CUDA when imported; dask is left to the children.
PRELOAD = ("torch.optim", "torch._dynamo", "unsamflow.trainer.model", "unsamflow.trainer.engine.run",
           "unsamflow.trainer.evaluation", "unsamflow.pipeline.segmenters.sam")
MIN_SLOT_S = 8  # a measurement with less time than this is skipped, not started


# What CUDA or torch say when a forked process may not use CUDA: the rest then run in spawned processes.
FORK_REFUSED = ("Cannot re-initialize CUDA in forked subprocess", "CUDA error: initialization error")


def _child(name: str, ctx: Ctx, result: Path) -> None:
    os.setsid()  # its own process group: a timeout kills its cluster, loader workers and CLIs with it
    run_one(name, ctx, result)


def run_measure(name: str, ctx: Ctx, timeout: float, method: str = "fork") -> dict[str, Any]:
    """One measurement in a process of its own; its JSON, or the reason it has none (with the figures it
    had saved, if any)."""
    result = ctx.work / f"result-{name}.json"
    ctx.partial = ctx.work / f"partial-{name}.json"
    for f in (result, ctx.partial):
        f.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    proc = mp.get_context(method).Process(target=_child, args=(name, ctx, result), name=f"gpu-check-{name}")
    t0 = time.perf_counter()
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        _kill_group(proc.pid)
        proc.join(10)
        doc = {"error": f"timed out after {timeout:.0f} s (the check's time budget)"}
    else:
        _kill_group(proc.pid)  # whatever it left running (a nanny, a loader worker)
        if result.is_file():
            return json.loads(result.read_text())
        doc = {"error": f"the measurement's process died with exit code {proc.exitcode} before writing a "
                        "result"}  # fmt: skip
    if ctx.partial.is_file():
        doc["figures"] = json.loads(ctx.partial.read_text())
        doc["error"] += "; the figures are those saved before"
    return {**doc, "seconds": time.perf_counter() - t0}


def _kill_group(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def plan(name: str, smoke: bool, left: float, later: list[str]) -> float:
    """Seconds measurement `name` may take: its planned time (x1.5 on a GPU; generous in the smoke run,
    whose sizes are tiny but whose CPU is shared; the open-ended one: all), less the reserves of the
    measurements still to come (GPU runs only)."""
    reserve = 0.0 if smoke else sum(RESERVE_S.get(n, 0.0) for n in later)
    cap = 120.0 if smoke else (float("inf") if name == OPEN_ENDED else 1.5 * MEASURES[name][1])
    return max(0.0, min(cap, left - reserve))


def cuda_tests_summary(log: Path | None, rc: int | None) -> dict[str, Any] | None:
    """The pytest run of the CUDA tests, as the shell script left it: exit code and closing line."""
    if log is None:
        return None
    text = log.read_text(errors="replace") if log.is_file() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    closing = next((ln for ln in reversed(lines) if " in " in ln and any(
        w in ln for w in ("passed", "failed", "skipped", "error", "no tests"))), None)  # fmt: skip
    skips = [ln for ln in lines if ln.startswith("SKIPPED")]
    return {"exit_code": rc, "summary": closing, "skipped": skips[:20], "log": log.name}


def write_results(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(markdown(doc))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return "" if v is None else str(v)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]


def markdown(doc: dict[str, Any]) -> str:
    """The results as a page: one table row per training variant, a table per measurement with rows,
    the other figures as lists."""
    m = doc["machine"]
    lines = [f"# GPU check ({doc['mode']})", "",
             f"{m.get('gpu') or 'no GPU'}; torch {m.get('torch')}; Python {m.get('python')}; started "
             f"{doc['started']}, {doc.get('elapsed_s', 0):.0f} s of a {doc['budget_s']:.0f} s budget. "
             "SAM runs with random weights of the real architectures: its seconds are those of the "
             "released models, its mask counts are not.", ""]  # fmt: skip
    tests = doc.get("cuda_tests")
    if tests:
        lines += [f"CUDA tests (`pytest -m cuda`): exit code {tests['exit_code']}, {tests['summary']}", ""]
    ms = doc["measures"]
    train = [{"variant": k[len("train_"):], **_train_row(v)} for k, v in ms.items() if k.startswith("train_")]
    if train:
        lines += ["## Training step (kitti-aug-hg-mf, last stage)", "", *_table(train), ""]
    for name, res in ms.items():
        if name.startswith("train_"):
            continue
        lines += [f"## {MEASURES[name][0]}", ""]
        if "error" in res:
            lines += [f"error after {res.get('seconds', 0):.0f} s: {res['error']}", ""]
            continue
        figs = res.get("figures", {})
        for key, value in figs.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                lines += [*_table(value), ""]
            else:
                lines.append(f"- {key}: {_fmt(value)}")
        lines += [f"- seconds: {res.get('seconds', 0):.1f}", ""]
    return "\n".join(lines) + "\n"


def _train_row(res: dict[str, Any]) -> dict[str, Any]:
    if "error" in res:
        return {"error": res["error"][:200]}
    f = res.get("figures", {})
    if "skipped" in f:
        return {"note": f["skipped"]}
    keys = ("s_per_step", "samples_per_s", "peak_gib", "fraction_network", "fraction_homography",
            "fraction_loader", "warmup_s")  # fmt: skip
    return {k: f.get(k) for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output folder (results.json, results.md)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds from now for all measurements")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: the script's own test")
    ap.add_argument("--only", default="", help="comma list of measurements (default: all)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder)")
    ap.add_argument("--tests-log", type=Path, help="the CUDA tests' pytest output (from gpu_check.sh)")
    ap.add_argument("--tests-rc", type=int, help="their exit code")
    ap.add_argument("--note", action="append", default=[], help="KEY=VALUE recorded under notes")
    ap.add_argument("--start-method", choices=["auto", "fork", "spawn"], default="auto",
                    help="how measurement processes start (auto: fork, spawn once CUDA refuses a fork)")
    args = ap.parse_args(argv)
    deadline = time.time() + args.budget
    for mod in PRELOAD:
        try:
            importlib.import_module(mod)
        except Exception as exc:  # the measurement that needs it records the error
            print(f"[gpu-check] could not import {mod}: {type(exc).__name__}: {exc}", flush=True)
    names = [n for n in args.only.split(",") if n] or list(MEASURES)
    unknown = sorted(set(names) - set(MEASURES))
    if unknown:
        ap.error(f"--only: unknown measurements {unknown}; known: {', '.join(MEASURES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="unsamflow-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "budget_s": args.budget, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                             "host": platform.node(), "cpus": os.cpu_count()},
        "notes": dict(n.split("=", 1) for n in args.note if "=" in n),
        "cuda_tests": cuda_tests_summary(args.tests_log, args.tests_rc), "measures": {},
    }  # fmt: skip
    t_start = time.time()
    method = "spawn" if args.start_method == "spawn" or torch.cuda.is_initialized() else "fork"
    doc["notes"]["start_method"] = method
    for i, name in enumerate(names):
        slot = plan(name, args.cpu_smoke, deadline - time.time(), names[i + 1:])
        print(f"[gpu-check] {name}: {MEASURES[name][0]} (up to {slot:.0f} s)", flush=True)
        if slot < MIN_SLOT_S:
            doc["measures"][name] = {"error": f"not run: {slot:.0f} s left of the budget"}
        else:
            ctx = Ctx(smoke=args.cpu_smoke, work=work, out=args.out, deadline=time.time() + slot)
            doc["measures"][name] = run_measure(name, ctx, slot, method)
            refused = any(m in doc["measures"][name].get("error", "") for m in FORK_REFUSED)
            if refused and method == "fork" and args.start_method == "auto":
                print(f"[gpu-check] {name}: CUDA refused a forked process; this and the rest run spawned",
                      flush=True)  # fmt: skip
                method = doc["notes"]["start_method"] = "spawn"
                slot = plan(name, args.cpu_smoke, deadline - time.time(), names[i + 1:])
                ctx = Ctx(smoke=args.cpu_smoke, work=work, out=args.out, deadline=time.time() + slot)
                doc["measures"][name] = run_measure(name, ctx, slot, method)
        res = doc["measures"][name]
        print(f"[gpu-check] {name}: " + (f"ERROR {res['error']}" if "error" in res else
              f"done in {res.get('seconds', 0):.1f} s"), flush=True)  # fmt: skip
        env = doc["measures"].get("env", {}).get("figures", {})
        keys = ("gpu", "gpu_memory_gib", "capability", "torch_cuda")
        doc["machine"].update({k: env[k] for k in keys if k in env})
        doc["elapsed_s"] = time.time() - t_start
        write_results(args.out, doc)
    failed = [n for n, r in doc["measures"].items() if "error" in r]
    print((args.out / "results.md").read_text())
    print(f"[gpu-check] results: {args.out / 'results.json'}; {len(names) - len(failed)} of {len(names)} "
          f"measurements done" + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
