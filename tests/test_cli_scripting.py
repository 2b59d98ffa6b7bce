"""The CLI as scripts use it: --json summaries, exit statuses 0 / 1 / 2, quiet progress bars, dashboard."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from unsamflow.pipeline.cli import main
from unsamflow.pipeline.progress import bar_disable


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic set of 2 frames run through `run --json -q` on one local worker."""
    from unsamflow.pipeline.synthetic import generate_dataset

    base = tmp_path_factory.mktemp("cli")
    generate_dataset(base / "data", sequences=1, frames=2, size=(48, 64), seed=0, difficulty="easy",
                     progress=False)
    out = base / "out"
    res = CliRunner().invoke(main, ["run", "--manifest", str(base / "data" / "manifest.json"),
                                    "--out", str(out), "--shards", "1", "--workers", "1", "--no-dashboard",
                                    "--pictures", "0", "--json", "-q"])
    return base, out, res


def test_run_json_summary_is_the_only_stdout(tiny_run):
    _, out, res = tiny_run
    assert res.exit_code == 0, (res.output, res.stderr)
    summary = json.loads(res.stdout)  # nothing else on stdout
    assert summary["exit_status"] == 0 and summary["verify"]["ok"] is True
    assert summary["segment"]["frames"] == 2 and summary["segment"]["bad"] == {}
    assert "[5/6] verify: ok" in res.stderr  # the human lines went to stderr
    assert "segment:" not in res.stderr  # -q: no progress bar (nor would a non-terminal get one)


def test_segment_and_verify_json_and_exit_statuses(tiny_run):
    base, out, _ = tiny_run
    runner = CliRunner()
    res = runner.invoke(main, ["segment", "--shards", str(out / "shards"), "--out", str(out / "stores"),
                               "--json", "--no-dashboard"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped"] == 1  # complete store: nothing to do
    res = runner.invoke(main, ["verify", "--stores", str(out / "stores"), "--manifest",
                               str(out / "manifest.json"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["ok"] is True
    assert "verify masks" not in res.stderr  # stderr is not a terminal: no bars without -q
    # 1: a failed check (the manifest lists a frame no store holds)
    m = json.loads((out / "manifest.json").read_text())
    m["frames"].append({**m["frames"][0], "id": m["frames"][0]["id"].replace(".png", "_x.png")})
    (base / "more.json").write_text(json.dumps(m))
    res = runner.invoke(main, ["verify", "--stores", str(out / "stores"), "--manifest",
                               str(base / "more.json"), "--json", "--no-hash"])
    assert res.exit_code == 1
    got = json.loads(res.stdout)
    assert got["ok"] is False and any("missing frame" in p for p in got["problems"])
    # 2: usage and input errors
    assert runner.invoke(main, ["verify", "--stores", str(out / "stores")]).exit_code == 2
    assert runner.invoke(main, ["verify", "--stores", str(base / "none"), "--manifest",
                                str(base / "none.json")]).exit_code == 2


def test_progress_bars_obey_quiet_and_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert bar_disable(False) is True
    assert bar_disable(True) is None  # tqdm decides: off when the stream is not a terminal
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bar_disable(True) is True
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert bar_disable(True) is None


def test_dashboard_has_bokeh():
    """Dask serves its dashboard only with bokeh installed (else the page says so)."""
    bokeh = pytest.importorskip("bokeh", reason="bokeh is a dependency: pip install -e .")
    assert tuple(int(v) for v in bokeh.__version__.split(".")[:2]) >= (3, 1)  # distributed's minimum
    import urllib.request

    from unsamflow.pipeline.cluster import ClusterConfig, open_cluster

    with open_cluster(ClusterConfig(workers=1, gpus=[], dashboard="127.0.0.1:0")) as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30) as page:  # the link the CLI prints serves a page
            body = page.read().decode("utf-8", "replace")
    assert page.status == 200 and "Dask needs bokeh" not in body  # distributed's page when it is missing


def test_every_command_documents_exit_statuses():
    for name in main.commands:
        text = CliRunner().invoke(main, [name, "--help"]).output
        assert "Exit status" in text or "exit status" in text.lower(), name


def test_one_layout_syntax_a_choice_list_and_ptlflow_names(tmp_path, shipped_data):
    runner = CliRunner()
    root = str(shipped_data / "sintel")
    base = ["manifest", "--root", root, "--allow-partial"]
    res = runner.invoke(main, [*base, "--layout", "sintel-clean", "--out", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["layout"] == "sintel" and a["meta"]["options"]["passes"] == ["clean"]
    res = runner.invoke(main, [*base, "--layout", "sintel", "-l", "passes=clean", "--out",
                               str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b.json").read_text())["frames"] == a["frames"]  # the same manifest
    res = runner.invoke(main, [*base, "--layout", "sintel-cleen", "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "sintel-clean" in res.output  # a choice list: the valid names are shown
    for cmd in ("manifest", "run", "show-flow"):
        text = runner.invoke(main, [cmd, "--help"]).output
        assert "-l, --layout-option KEY=VALUE" in text and "kitti-2015" in text, cmd


def test_segmenters_explains_options_and_makes_the_smoke_checkpoint(tmp_path):
    runner = CliRunner()
    text = runner.invoke(main, ["segmenters"]).output
    assert "pred_iou_thresh = 0.88" in text and "predicted mask quality" in text
    assert "longer side of the working image" in text  # graph's own docstring
    res = runner.invoke(main, ["segmenters", "--tiny-checkpoint", str(tmp_path / "tiny.pth")])
    assert res.exit_code == 0 and (tmp_path / "tiny.pth").is_file()
    from unsamflow.pipeline.segmenters.sam import load_sam_state_dict

    assert load_sam_state_dict(tmp_path / "tiny.pth", "vit_tiny")
