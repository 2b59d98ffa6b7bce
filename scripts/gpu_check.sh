#!/usr/bin/env bash
# One command for a GPU window: install the project and the carried wheels (no network), run the CUDA
# tests, then every measurement of benchmarks/gpu_check.py under one time budget; everything lands in one
# folder (log.txt, cuda_tests.txt, results.json, results.md).
#
#   scripts/gpu_check.sh [--out DIR] [--budget SECONDS] [--wheels DIR] [--cpu-smoke]
#
#   --out DIR        output folder (default: gpu_check/ in the repository)
#   --budget S       seconds for the whole run, install included (default 460: done in <= 8 minutes)
#   --wheels DIR     wheels to install first (default: gpu_wheels/, made by `make gpu-wheels`)
#   --cpu-smoke      tiny sizes on the CPU (the test suite runs this, so the script cannot rot)
#   PYTHON=...       the interpreter (default: python3)
#
# On a machine that cannot reach a package index, carry gpu_wheels/ with the tree. Each step is bounded
# and a failing one is recorded, not fatal: the exit status is 1 when a test or a measurement failed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/gpu_check"
budget=460
wheels="$repo/gpu_wheels"
smoke=""
py="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --cpu-smoke) smoke="--cpu-smoke"; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$budget" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$budget'" >&2; exit 2 ;; esac

start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/unsamflow-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
exec > >(tee "$out/log.txt") 2>&1
echo "[gpu-check] $(date -u '+%F %T') UTC on $(hostname); output in $out; budget ${budget} s${smoke:+ (cpu smoke)}"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# the smoke run's tensors are tiny: one math thread each (OpenMP threads spin-waiting on a shared 2-core box
# cost more than they give)
[ -n "$smoke" ] && export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [ -z "$smoke" ] && ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "[gpu-check] no CUDA device here: this check is for a GPU machine (--cpu-smoke runs it on a CPU with" \
    "tiny sizes)" >&2
  "$py" -c "import torch; print('[gpu-check] torch', torch.__version__, 'built for CUDA', torch.version.cuda)" 2>&1
  command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1
  exit 2
fi

# 1. install: the carried wheels, then the project from this tree, into one target folder
site="$work/site"
mkdir -p "$site"
shopt -s nullglob
whls=("$wheels"/*.whl)
shopt -u nullglob
if [ ${#whls[@]} -gt 0 ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "${whls[@]}" || echo "[gpu-check] WARNING: installing the ${#whls[@]} wheels of $wheels failed"
  echo "[gpu-check] installed ${#whls[@]} wheels from $wheels"
else
  echo "[gpu-check] no wheels in $wheels: using the packages $py already has (make gpu-wheels makes them)"
fi
how="pip"
if ! "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$site" "$repo" >"$work/pip.log" 2>&1; then
  # e.g. no setuptools >= 77 there to build with: the repository root is the package, so link it
  tail -3 "$work/pip.log"
  rm -rf "$site/unsamflow"
  ln -s "$repo" "$site/unsamflow"
  how="link (pip could not build it here)"
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
echo "[gpu-check] project installed into $site by $how"
cd "$repo" || exit 2
"$py" - <<'EOF'
import importlib, importlib.metadata as md, platform
print(f"[gpu-check] Python {platform.python_version()}")
for pkg, mod in [("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"), ("h5py", "h5py"),
                 ("dask", "dask"), ("distributed", "distributed"), ("segment-anything", "segment_anything"),
                 ("sam2", "sam2"), ("segment-anything-hq", "segment_anything_hq"), ("unsamflow", "unsamflow")]:
    try:
        m = importlib.import_module(mod)
        print(f"[gpu-check]   {pkg} {md.version(pkg)} from {m.__file__.rsplit('/', 2)[0]}")
    except Exception as exc:
        print(f"[gpu-check]   {pkg}: NOT importable ({type(exc).__name__}: {exc})")
import torch
print(f"[gpu-check]   CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""))
EOF

# 2. the CUDA tests (they skip on a CPU, with that reason)
tests_cap=$([ -n "$smoke" ] && echo 150 || echo 100)
tests_s=$(( $(left) - 300 < tests_cap ? $(left) - 300 : tests_cap ))
[ -n "$smoke" ] && tests_s=$tests_cap
[ "$tests_s" -lt 30 ] && tests_s=30
echo "[gpu-check] CUDA tests (pytest -m cuda, up to ${tests_s} s)"
timeout -k 5 "$tests_s" "$py" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider \
  >"$out/cuda_tests.txt" 2>&1
tests_rc=$?
tail -25 "$out/cuda_tests.txt"
[ $tests_rc -eq 124 ] && echo "[gpu-check] CUDA tests: stopped after ${tests_s} s"

# 3. the measurements, in what is left of the budget
measure_s=$(left)
echo "[gpu-check] measurements (${measure_s} s left)"
"$py" -m benchmarks.gpu_check --out "$out" --budget "$measure_s" --work "$work/measures" $smoke \
  --tests-log "$out/cuda_tests.txt" --tests-rc "$tests_rc" --note "install=$how" --note "wheels=${#whls[@]}"
measures_rc=$?
echo "[gpu-check] done in $(( $(date +%s) - start )) s: CUDA tests exit $tests_rc, measurements exit $measures_rc;" \
  "results in $out/results.json and $out/results.md"
# pytest's 5 (nothing collected) does not happen here; every other non-zero is a failure
[ $tests_rc -eq 0 ] && [ $measures_rc -eq 0 ]
