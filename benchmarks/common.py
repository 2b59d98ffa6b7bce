"""Where benchmark figures go: one JSON (machine-readable) and one Markdown table per benchmark."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

TRACKED = Path(__file__).resolve().parent / "results"  # the figures the repository ships


def updating() -> bool:
    """True when a run may replace the tracked figures: `make bench UPDATE=1` or UNSAMFLOW_BENCH_UPDATE=1."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes")
               for k in ("UNSAMFLOW_BENCH_UPDATE", "UPDATE"))


def results_dir() -> Path:
    """Where this run writes: the tracked folder only when updating; else UNSAMFLOW_BENCH_RESULTS or a
    fixed folder under the system temp dir (shared by the benchmarks of one `make bench`)."""
    if updating():
        return TRACKED
    return Path(os.environ.get("UNSAMFLOW_BENCH_RESULTS") or Path(tempfile.gettempdir()) / "unsamflow-bench")


RESULTS = results_dir()


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


_RESERVED = ("benchmark", "machine", "rows", "notes")


def write_results(name: str, rows: list[dict], notes: str = "", summary: dict | None = None) -> Path:
    """Write benchmarks/results/<name>.json and <name>.md; returns the Markdown path.

    `summary`: headline figures (name -> JSON value), merged at the top level of the JSON beside
    benchmark / machine / rows / notes (which it must not redefine) and listed in the Markdown above
    the table.
    """
    summary = dict(summary or {})
    clash = sorted(set(summary) & set(_RESERVED))
    if clash:
        raise ValueError(f"write_results: summary keys {clash} are reserved")
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "machine": machine(), **summary, "rows": rows, "notes": notes}
    (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=1))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {name}", "", notes, ""]
    if summary:
        lines += [f"- {k}: {_fmt(v)}" for k, v in summary.items()] + [""]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    md = RESULTS / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    if RESULTS != TRACKED:
        print(f"{name}: results in {RESULTS} (the tracked {TRACKED.name}/ is unchanged; UPDATE=1 updates it)",
              flush=True)
    return md


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
