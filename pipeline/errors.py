"""Errors that reach users. Each names the item (file, frame, parameter) and what is wrong."""

from __future__ import annotations

import errno
import sys

import click


class PipelineError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""


class BadInputError(PipelineError, ValueError):
    """A user-given file, path or parameter is unusable (a ValueError too, so callers of the Python API
    can catch it the usual way)."""


class BadFrameError(PipelineError):
    """One frame cannot be used; the run records it with its reason and goes on."""

    def __init__(self, frame: str, reason: str):
        self.frame = frame
        self.reason = reason
        super().__init__(frame, reason)  # both in args, so it pickles across Dask workers

    def __str__(self) -> str:
        return f"frame {self.frame!r}: {self.reason}"


class StoreError(PipelineError):
    """A mask store is missing, corrupt, or inconsistent with its siblings."""


def from_dict_strict(cls: type, data: dict, what: str):
    """`cls(**data)` for a dataclass, refusing unknown keys by name (a typo must not pass silently);
    missing keys take the defaults. `what` names the config in the error ("derive config")."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(f"{what}: unknown key(s) {unknown}; known keys are {sorted(known)}")
    return cls(**data)


def is_disk_full(exc: BaseException | None) -> bool:
    """Is `exc` (or what caused it) "no space left on device" (ENOSPC, or EDQUOT: over a quota)? Not a
    transient error: retrying a task that failed of it only fills the disk again."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ReportingGroup(click.Group):
    """A click group that prints a PipelineError as one line and exits 2, instead of a traceback.

    Also one line each for what users cause or meet outside the code: Ctrl-C (exit 130; complete
    stores stay, unfinished ones were only ever temporary files) and a file-system error such as a
    full disk (exit 2, naming the file; atomic writers have removed their temporary file by then).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PipelineError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: complete stores are kept; shards in progress were discarded "
                       "(the next run redoes them)", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno is None:  # not the file system's (e.g. a network error inside a library)
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error: cannot write or read{where}: {exc.strerror or exc}", err=True)
            sys.exit(2)
