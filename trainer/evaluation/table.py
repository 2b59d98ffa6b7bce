"""Metric tables (plain text for the terminal, markdown for reports) in ptlflow's column order."""

from __future__ import annotations

from collections.abc import Sequence

ORDER = ("epe", "epe_non_occ", "epe_occ", "px1", "px3", "px5", "flall")


def metric_columns(rows: Sequence[dict[str, float]]) -> list[str]:
    """The metric names any row has: pooled ones first in ORDER, then the *_per_image ones, then others."""
    present = {k for r in rows for k in r}
    names = [*ORDER, *(f"{k}_per_image" for k in ORDER)]
    cols = [k for k in names if k in present]
    return cols + sorted(present - set(cols))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def text_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """Aligned columns: one row per (label, metrics)."""
    cols = metric_columns([m for _, m in rows])
    lines = [["", *cols]] + [[label, *(_cell(m.get(c)) for c in cols)] for label, m in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in
                               enumerate(zip(line, widths, strict=True))) for line in lines)  # fmt: skip


def markdown_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    cols = metric_columns([m for _, m in rows])
    out = ["| | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    out += [f"| {label} | " + " | ".join(_cell(m.get(c)) for c in cols) + " |" for label, m in rows]
    return "\n".join(out)
