"""`make bench` leaves the tracked results alone unless asked (UPDATE=1 / UNSAMFLOW_BENCH_UPDATE=1)."""

from __future__ import annotations

import importlib


def _common(monkeypatch, tmp_path, **env):
    for k in ("UNSAMFLOW_BENCH_UPDATE", "UPDATE", "UNSAMFLOW_BENCH_RESULTS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import benchmarks.common as common

    return importlib.reload(common)


def test_results_go_to_a_scratch_folder_unless_updating(monkeypatch, tmp_path):
    common = _common(monkeypatch, tmp_path, UNSAMFLOW_BENCH_RESULTS=str(tmp_path / "scratch"))
    assert common.RESULTS == tmp_path / "scratch" != common.TRACKED
    md = common.write_results("probe", [{"a": 1.5}], "n")
    assert md.parent == tmp_path / "scratch" and not (common.TRACKED / "probe.md").exists()
    common = _common(monkeypatch, tmp_path)
    assert common.RESULTS != common.TRACKED
    for env in ({"UPDATE": "1"}, {"UNSAMFLOW_BENCH_UPDATE": "1"}):
        assert _common(monkeypatch, tmp_path, **env).RESULTS == common.TRACKED
    monkeypatch.delenv("UNSAMFLOW_BENCH_UPDATE")
    importlib.reload(common)  # leave the module as the other tests expect it
