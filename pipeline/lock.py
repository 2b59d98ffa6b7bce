"""One writer per output directory: an flock on `<dir>/.unsamflow.lock` holding who has it.

Two commands writing one directory would remove each other's temporary files (each treats temps it
did not create as left by a dead writer) and race on the same stores. So every command that writes
stores (`run`, `segment`, `derive`, `index`) takes this lock first and refuses to start while another
process holds it, naming that process (pid, host, command, start time).

The kernel releases an flock when its holder dies, so a crashed run never blocks the next one. One
case survives the holder: a process it forked (an orphaned worker) still has the file open. When the
recorded holder is a dead process on this host, the lock file is replaced and the new one locked: the
orphan's lock then guards nothing. A holder on another host cannot be checked and is always obeyed.

Holding the lock also means every temporary file in the directory belongs to a dead writer, so
`sweep_temps` may remove them (a killed `derive` leaves a store-sized one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from unsamflow.pipeline.errors import BadInputError

LOCK_NAME = ".unsamflow.lock"
TEMP_GLOB = ".*.tmp-*"  # atomic.temp_path's names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    get = holder.get
    return (f"`{get('command', '?')}` (pid {get('pid', '?')} on host {get('host', '?')}, "
            f"started {get('started', '?')})")


@contextlib.contextmanager
def output_lock(directory: str | Path, command: str) -> Iterator[Path]:
    """Hold the write lock of `directory` (created if needed) for the block; BadInputError when taken."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    host = socket.gethostname()
    fd = None
    for _ in range(5):  # retried only when the file was replaced between open and lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            fd = None
            holder = _holder(path)
            pid = holder.get("pid")
            if holder.get("host") == host and isinstance(pid, int) and not _alive(pid):
                # The holder died; a process it forked keeps the old file locked. Replace the file.
                path.unlink(missing_ok=True)
                continue
            raise BadInputError(
                f"{directory} is being written by {describe_holder(holder)}; wait for it to finish or use "
                f"another output directory (lock: {path})"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file that was unlinked meanwhile: lock the current one
        fd = None
    if fd is None:
        raise BadInputError(f"{directory}: could not take the lock {path} (it keeps being replaced)")
    me = {"pid": os.getpid(), "host": host, "command": command,
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the file stays (unlinking it would race with a waiting locker)
        if created and [p.name for p in directory.iterdir()] == [LOCK_NAME]:
            # A command refused before it wrote anything leaves no output directory behind.
            with contextlib.suppress(OSError):
                path.unlink()
                directory.rmdir()
        os.close(fd)


def sweep_temps(directory: str | Path) -> list[Path]:
    """Remove temporary files left in `directory` by writers that died; call only under output_lock."""
    removed = []
    for tmp in sorted(Path(directory).glob(TEMP_GLOB)):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
