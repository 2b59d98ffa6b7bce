"""Where benchmark figures go: one JSON (machine-readable) and one Markdown table per benchmark."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_results(name: str, rows: list[dict], notes: str = "") -> Path:
    """Write benchmarks/results/<name>.json and <name>.md; returns the Markdown path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"benchmark": name, "machine": machine(), "rows": rows, "notes": notes}, indent=1)
    )
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {name}", "", notes, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    md = RESULTS / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
