"""A run's output directory: checked before any training, held by one run at a time.

:func:`hold` is what :func:`eidetic_func.run` and the CLI enter before they read or write a
run's files. It refuses, with :class:`OutputDirError`, a path that is a file, a symlink
loop, a directory it cannot write (checked by writing, so read-only mounts fail at once,
not at the first checkpoint), a directory another run holds (an exclusive ``flock`` on
``.eidetic-func.lock``, released by the kernel when the holder exits, even by
``kill -9``), and a fresh run over an existing checkpoint unless ``overwrite``. While held,
temporary files left by killed writes are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from eidetic_func.core.errors import OutputDirError

LOCK_FILE = ".eidetic-func.lock"
STALE_PATTERNS = (".*.tmp", ".*.tmp.png")  # atomic writes that a killed process left behind
# An overwritten run's checkpoint waits under ``.<checkpoint>.replaced`` until the new run
# writes its own: a new run that fails before that (a typo in its settings, a missing data
# root) gives the old run back.
ASIDE_SUFFIX = ".replaced"

# directories this process holds (re-entrant: a run started where its caller holds the dir)
_held: dict[Path, int] = {}


@contextlib.contextmanager
def hold(
    path: str | os.PathLike[str],
    *,
    checkpoint: str,
    resume: bool,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> Iterator[Path]:
    """Hold the output directory ``path`` for one run; yield it (created if missing).

    ``checkpoint`` is the run's checkpoint file name. A fresh run (``resume=False``) over an
    existing checkpoint is refused unless ``overwrite``, which replaces that checkpoint so
    a later ``--resume`` cannot continue the old run by mistake: it is set aside, deleted
    when the new run finishes or fails after writing its first checkpoint, and restored
    if the new run fails before that (its settings refused, its data missing,
    interrupted, killed: then the next hold restores it).
    """
    directory = Path(path)
    created = _missing(directory)
    key = _usable(directory).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield directory
        finally:
            _held[key] -= 1
        return
    new_lock = not (directory / LOCK_FILE).exists()
    try:
        fd = _lock(directory)
    except BaseException:  # the lock file may be another run's now: it stays
        _remove_empty(created)
        raise
    _held[key] = 1
    existing, aside = directory / checkpoint, directory / f".{checkpoint}{ASIDE_SUFFIX}"
    failed = True
    try:
        _remove_stale(directory, log)
        _settle_aside(existing, aside, log)
        if not resume and existing.exists():
            if not overwrite:
                raise OutputDirError(
                    f"{directory} already holds a run ({checkpoint}): continue it with "
                    "--resume (resume=True), or start over with --overwrite (overwrite=True)"
                )
            os.replace(existing, aside)
            log(f"overwriting the run in {directory}")
        try:
            yield directory
        except BaseException:
            _settle_aside(existing, aside, log)
            raise
        aside.unlink(missing_ok=True)  # the new run finished: the old one is replaced
        failed = False
    finally:
        del _held[key]
        if failed and new_lock:  # unlinked while still locked: no other run can hold it
            with contextlib.suppress(OSError):
                (directory / LOCK_FILE).unlink()
        os.close(fd)  # releases the flock
        if failed:
            _remove_empty(created)


def _missing(directory: Path) -> list[Path]:
    """``directory`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    return missing


def _remove_empty(created: list[Path]) -> None:
    """After a run that failed: the directories it made (deepest first) go if nothing is
    in them (its settings refused, its data missing); one holding a checkpoint stays."""
    with contextlib.suppress(OSError):
        for made in created:
            made.rmdir()  # only an empty one; a directory holding anything stops here


def _settle_aside(existing: Path, aside: Path, log: Callable[[str], None]) -> None:
    """After a new run failed or was killed: the overwritten checkpoint set aside goes if
    the new run had written its own, and comes back if not."""
    if not aside.exists():
        return
    if existing.exists():
        aside.unlink()
    else:
        os.replace(aside, existing)
        log(f"the new run wrote no checkpoint: {existing} is the overwritten run's again")


def _usable(directory: Path) -> Path:
    """Create ``directory`` if needed; refuse files, symlink loops and unwritable places."""
    try:
        try:
            info = os.stat(directory)  # unlike Path.exists, reports a symlink loop as one
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            raise OutputDirError(f"output path {directory} is a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
    except OutputDirError:
        raise
    except OSError as e:
        raise OutputDirError(f"cannot use {directory} as the output directory: {_why(e)}") from e
    try:  # a real write: a read-only mount or directory fails here, before any training
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".eidetic-func-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(f"cannot write to the output directory {directory}: {_why(e)}") from e
    return directory


def _lock(directory: Path) -> int:
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise OutputDirError(f"cannot create the lock file {path}: {_why(e)}") from e
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the directory is not protected
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise OutputDirError(
            f"{directory} is in use by another run ({holder}); wait for it to finish, or "
            "choose another output directory"
        ) from None
    except OSError as e:
        os.close(fd)
        raise OutputDirError(f"cannot lock {path}: {_why(e)}") from e
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return (
            f"pid {record['pid']} on {record['host']} since {record['since']}: {record['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that did not say who it is"


def _remove_stale(directory: Path, log: Callable[[str], None]) -> None:
    """Temporary files of writes a killed run left: no live writer exists while we hold it."""
    stale = [p for pattern in STALE_PATTERNS for p in directory.glob(pattern) if p.is_file()]
    size = 0
    for p in stale:
        with contextlib.suppress(OSError):
            size += p.stat().st_size
            p.unlink()
    if stale:
        log(
            f"removed {len(stale)} temporary file(s) of interrupted writes ({size / 2**20:.1f} MiB)"
        )


def _why(e: OSError) -> str:
    return e.strerror or str(e)
