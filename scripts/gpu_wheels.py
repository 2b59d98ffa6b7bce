"""The wheels a bare GPU machine needs for `scripts/gpu_check.sh`, downloaded into one ignored folder.

The GPU machine (Python 3.12, x86-64, torch 2.11 with CUDA; no package index reachable) holds the
packages in MACHINE_HAS. What the check imports beyond them: dask + distributed (the pipeline's cluster),
segment-anything (the `sam` backend), sam2 and segment-anything-hq (their backends), and whatever of their
dependencies the machine lacks. The set is computed from this environment's installed metadata (so the
versions are the ones the test suite ran with), less MACHINE_HAS; markers are evaluated for Python 3.12 on
Linux. Binary wheels come for cp312 manylinux x86-64; a package PyPI ships only as a source archive
(sam2, antlr4-python3-runtime) is built here into a pure-Python wheel (sam2 without its optional CUDA
extension, as the project installs it). At the end the wheels and the working tree that travels with them
(git's tracked and untracked-not-ignored files) are checked against the 64 MiB a device call carries.

Run: make gpu-wheels   (= .venv/bin/python scripts/gpu_wheels.py --dest gpu_wheels)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
BUDGET = 64 * 2**20  # bytes a device call carries: the working tree and the carried wheels together
NEEDED = ["dask", "distributed", "segment-anything", "sam2", "segment-anything-hq"]
# The GPU image's Python packages (the device notes' list, read 2026-11-17), normalised names.
_MACHINE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
MACHINE_HAS = frozenset(_MACHINE_LIST.split())
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_set(needed: list[str] = NEEDED, machine_has: frozenset[str] = MACHINE_HAS) -> dict[str, str]:
    """{name: installed version} of `needed` and their dependencies (for Python 3.12 Linux, no extras)
    that the machine lacks, walking this environment's installed metadata."""
    out: dict[str, str] = {}
    todo = [normalise(n) for n in needed]
    while todo:
        name = todo.pop()
        if name in out or name in machine_has:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as exc:
            msg = f"gpu-wheels: {name} is not installed in {sys.prefix}; run `make venv` first"
            raise SystemExit(msg) from exc
        out[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate(TARGET_ENV):
                todo.append(normalise(req.name))
    return dict(sorted(out.items()))


def pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def fetch(name: str, version: str, dest: Path) -> Path:
    """The cp312 manylinux x86-64 (or pure) wheel of name==version in dest; from a source archive, built
    here when PyPI has no wheel (the result must be pure Python to run there)."""
    before = set(dest.glob("*.whl"))
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    got = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation",
              "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none", *plat, "-d", str(dest),
              f"{name}=={version}")  # fmt: skip
    if got.returncode != 0:
        with tempfile.TemporaryDirectory() as tmp:
            # built against this environment (sam2's build needs torch); sam2's setup.py builds its CUDA
            # extension only when asked, and it is optional at run time
            env = {"SAM2_BUILD_CUDA": "0"}
            got = pip("download", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "-d", tmp,
                      f"{name}=={version}", env=env)  # fmt: skip
            if got.returncode == 0:
                sdist = next(Path(tmp).iterdir())
                got = pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(sdist), env=env)
    new = set(dest.glob("*.whl")) - before
    if got.returncode != 0 or not (new or _have(name, version, dest)):
        raise SystemExit(f"gpu-wheels: no wheel for {name}=={version}:\n{got.stderr.strip()[-2000:]}")
    wheel = next(iter(new)) if new else _have(name, version, dest)
    assert wheel is not None
    tags = wheel.name[: -len(".whl")].split("-")[-3:]
    if not (tags[2] == "any" or "x86_64" in tags[2]):
        raise SystemExit(f"gpu-wheels: {wheel.name} is not for x86-64 Linux")
    return wheel


def _have(name: str, version: str, dest: Path) -> Path | None:
    stem = f"{normalise(name).replace('-', '_')}-{version}-"
    return next((w for w in dest.glob("*.whl") if w.name.lower().startswith(stem.lower())), None)


def tree_bytes(repo: Path = REPO, skip: Path | None = None) -> int:
    """Bytes of what a device call sends: git's tracked and untracked-not-ignored files (less `skip`)."""
    cmd = ["git", "ls-files", "-co", "--exclude-standard", "-z"]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, check=True).stdout
    total = 0
    for rel in out.decode().split("\0"):
        p = repo / rel
        if rel and p.is_file() and not p.is_symlink() and (skip is None or skip not in p.parents):
            total += p.stat().st_size
    return total


def check_budget(wheels: list[Path], tree: int, budget: int = BUDGET) -> tuple[bool, str]:
    """(fits, one-line summary) of the wheels plus the tree against the budget."""
    w = sum(p.stat().st_size for p in wheels)
    mib = 2**20
    line = (f"wheels {w / mib:.1f} MiB + working tree {tree / mib:.1f} MiB = {(w + tree) / mib:.1f} MiB "
            f"of the {budget / mib:.0f} MiB a device call carries")  # fmt: skip
    return w + tree <= budget, line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=REPO / "gpu_wheels", help="folder for the wheels (ignored)")
    ap.add_argument("--list", action="store_true", help="only print the wheels that would be fetched")
    args = ap.parse_args()
    wanted = wheel_set()
    if args.list:
        print("\n".join(f"{n}=={v}" for n, v in wanted.items()))
        return
    args.dest.mkdir(parents=True, exist_ok=True)
    keep = set()
    for name, version in wanted.items():
        wheel = fetch(name, version, args.dest)
        keep.add(wheel)
        print(f"{wheel.name}  {wheel.stat().st_size / 1024:.0f} KiB", flush=True)
    for stale in set(args.dest.glob("*.whl")) - keep:  # two versions of one package stop the install there
        stale.unlink()
        print(f"removed stale {stale.name}")
    fits, line = check_budget(sorted(keep), tree_bytes(skip=args.dest.resolve()))
    print(line)
    if not fits:
        raise SystemExit("gpu-wheels: over the budget; carry fewer wheels or make the tree smaller")


if __name__ == "__main__":
    main()
