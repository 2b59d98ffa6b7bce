"""Preloaded into every local Dask worker process (Dask's `preload` hook).

Ctrl-C in a terminal sends SIGINT to the whole foreground process group, workers included; each
worker then printed its own KeyboardInterrupt traceback (about 30 lines for two workers) over the
client's one-line message. Workers ignore SIGINT: the client, which does get it, shuts them down.
"""

from __future__ import annotations

import contextlib
import signal


def dask_setup(worker=None) -> None:
    """Called by Dask in the worker process before it starts taking tasks."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing we can change from here
        signal.signal(signal.SIGINT, signal.SIG_IGN)
