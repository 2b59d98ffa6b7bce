"""`make bench` leaves the tracked results alone unless asked (UPDATE=1 / UNSAMFLOW_BENCH_UPDATE=1)."""

from __future__ import annotations

import importlib
import json

import pytest


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


def test_summary_figures_go_to_the_top_of_the_json_and_above_the_table(monkeypatch, tmp_path):
    common = _common(monkeypatch, tmp_path, UNSAMFLOW_BENCH_RESULTS=str(tmp_path / "scratch"))
    md = common.write_results("probe", [{"a": 1.5}], "n", summary={"ratio_vs_x": 0.25, "frames": 3})
    doc = json.loads(md.with_suffix(".json").read_text())
    assert doc["ratio_vs_x"] == 0.25 and doc["frames"] == 3 and doc["rows"] == [{"a": 1.5}]
    text = md.read_text()
    assert "- ratio_vs_x: 0.25" in text and text.index("- frames: 3") < text.index("| a |")
    plain = common.write_results("plain", [{"a": 1}], "n")  # no summary: as before
    assert set(json.loads(plain.with_suffix(".json").read_text())) == {"benchmark", "machine", "rows",
                                                                         "notes"}
    assert "- " not in plain.read_text()
    with pytest.raises(ValueError, match="reserved"):
        common.write_results("bad", [], summary={"rows": 1})
    monkeypatch.delenv("UNSAMFLOW_BENCH_RESULTS")
    importlib.reload(common)  # leave the module as the other tests expect it
