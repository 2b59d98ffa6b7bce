"""Progress bars that behave in scripts: off when asked (-q), off when stderr is not a terminal, and
off under TQDM_DISABLE (tqdm reads it only when `disable` is not passed explicitly)."""

from __future__ import annotations

import os


def bar_disable(progress: bool = True) -> bool | None:
    """tqdm's `disable`: True when not `progress` or TQDM_DISABLE is set, else None (tqdm then
    switches the bar off when its stream is not a terminal)."""
    if not progress:
        return True
    flag = os.environ.get("TQDM_DISABLE", "").strip().lower()
    if flag and flag not in ("0", "false", "no", "off"):
        return True
    return None
