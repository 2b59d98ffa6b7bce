"""The installed package as a new user gets it: a wheel's contents, and that wheel in a fresh venv.

The fresh venv takes its heavy dependencies (torch, dask, ...) from this environment's site-packages
through a .pth line, so no download is needed; unsamflow itself comes only from the wheel (a .pth line
does not run the editable install's import hook), and the commands run outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from unsamflow.pipeline.layouts import LAYOUTS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out),
         str(REPO)],
        check=True, capture_output=True, cwd=out, text=True,
    )
    (out / "build.log").write_text(built.stdout + built.stderr)
    (whl,) = out.glob("unsamflow-*.whl")
    return whl


def test_wheel_builds_without_setuptools_warnings(wheel):
    """The data folders (data_manifests/, trainer/config/presets/) are declared packages: no "Package would
    be ignored" warnings, and their files are in the wheel."""
    log = (wheel.parent / "build.log").read_text()
    assert "would be ignored" not in log, log[log.find("would be ignored") - 300:][:900]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "unsamflow/data_manifests/README.md" in names
    assert "unsamflow/trainer/config/presets/cpu-demo.yaml" in names


def test_readme_and_makefile_show_the_cpu_only_torch_install():
    readme, makefile = (REPO / "README.md").read_text(), (REPO / "Makefile").read_text()
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "--index-url $(TORCH_INDEX)" in makefile


def test_wheel_holds_every_module_and_the_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for half in ("pipeline", "trainer"):
        for src in (REPO / half).rglob("*"):
            if src.suffix in (".py", ".yaml", ".typed") and "__pycache__" not in src.parts:
                rel = src.relative_to(REPO).as_posix()
                assert f"unsamflow/{rel}" in names, f"{rel} is missing from the wheel (pyproject packages?)"
    for yaml_file in (REPO / "data_manifests").glob("*.yaml"):
        assert f"unsamflow/data_manifests/{yaml_file.name}" in names
    assert "unsamflow/__init__.py" in names and "unsamflow/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # nothing else at the top level: no `pipeline`/`trainer` to collide with, no tests or benchmarks
    assert {n.split("/")[0] for n in names} <= {"unsamflow"} | {n.split("/")[0] for n in names
                                                                if ".dist-info/" in n}
    # every standard layout ships its expected counts
    for name, layout in LAYOUTS.items():
        if layout.has_counts:
            assert f"unsamflow/data_manifests/{name}.yaml" in names


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv holding the wheel only; its dependencies come from this environment."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    subprocess.run([*pip, "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True)
    return env_dir


def _run(env_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_wheel_installs_and_runs_outside_the_repo(fresh_venv, tmp_path, shipped_data):
    py = str(fresh_venv / "bin" / "python")
    r = _run(fresh_venv, py, "-c", "import unsamflow, unsamflow.pipeline, unsamflow.trainer; "
             "print(unsamflow.__version__, unsamflow.__file__)", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(fresh_venv) in r.stdout and str(REPO) not in r.stdout  # the wheel, not the checkout
    for module in ("unsamflow.pipeline", "unsamflow.trainer"):
        r = _run(fresh_venv, py, "-m", module, "--help", cwd=tmp_path)
        assert r.returncode == 0 and "Usage" in r.stdout, r.stderr

    # A partial Sintel download: the completeness check (package data) stops it with rc 2.
    root = tmp_path / "Sintel"
    shutil.copytree(shipped_data / "sintel", root)
    r = _run(fresh_venv, str(fresh_venv / "bin" / "unsamflow-pipeline"), "manifest", "--layout", "sintel",
             "--root", str(root), "--out", str(tmp_path / "m.json"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "count mismatch: sintel training/clean: expected 1064 frames in 23 sequences, found 2" in out
    assert "does not hold the complete sintel dataset" in out
    assert not (tmp_path / "m.json").exists()


def test_other_pipeline_and_trainer_packages_break_nothing(fresh_venv, tmp_path):
    """PyPI has distributions that install top-level `trainer` (Coqui's) and `pipeline`; ours must not
    care. Stand-ins that fail on import are enough to show that nothing of ours imports those names."""
    site = subprocess.run([fresh_venv / "bin" / "python", "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    for name in ("trainer", "pipeline"):
        pkg = Path(site, name)
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(f"raise ImportError('the other distribution\\'s {name}')\n")
    try:
        for script in ("unsamflow-trainer", "unsamflow-pipeline"):
            r = _run(fresh_venv, str(fresh_venv / "bin" / script), "--help", cwd=tmp_path)
            assert r.returncode == 0 and "Usage" in r.stdout, r.stderr
    finally:
        for name in ("trainer", "pipeline"):
            shutil.rmtree(Path(site, name))


@pytest.mark.slow
def test_editable_install_is_one_type_checkers_resolve(tmp_path):
    """The Makefile's editable install (EDITABLE_INSTALL: a link tree) lets mypy see unsamflow's types; the
    plain `pip install -e .` installs an import hook for the root-as-package mapping, which static tools
    cannot follow (mypy revealed Any for Index.load). Then mypy over pyproject's [tool.mypy] packages, as
    `make test` runs it, passes."""
    import re

    flags = re.search(r"^EDITABLE_INSTALL := (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert flags, "Makefile: no EDITABLE_INSTALL"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-build-isolation", "-q", "-e", str(REPO), *flags.group(1).split()],
                   check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    probe = tmp_path / "probe.py"
    probe.write_text("from unsamflow.pipeline.store import Index\nreveal_type(Index.load)\n")
    mypy = [sys.executable, "-m", "mypy", "--python-executable", str(py), "--cache-dir", str(tmp_path / "c")]
    r = subprocess.run([*mypy, "--follow-imports=silent", str(probe)], capture_output=True, text=True,
                       cwd=tmp_path)  # fmt: skip
    revealed = next((line for line in r.stdout.splitlines() if "Revealed type" in line), r.stdout)
    assert "unsamflow.pipeline.store.index.Index" in revealed and "Any" not in revealed, r.stdout
    r = subprocess.run([*mypy, "--config-file", str(REPO / "pyproject.toml")], capture_output=True, text=True,
                       cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0 and "Success" in r.stdout, r.stdout + r.stderr
