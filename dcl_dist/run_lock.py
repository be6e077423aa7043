"""One run at a time in a run directory: rank 0 holds an exclusive lock on <run>/.lock for the run's life.

fcntl.flock: the operating system releases the lock when the process ends, however it ends (a crash, kill -9),
so a lock is never stale. The file names the holder (host, pid, since when, the command), so a second run is
refused with a message naming the first. On a filesystem without locks (some NFS and Lustre mounts) the run goes
on with a warning: nothing else is as reliable there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator

from dcl_dist import dist
from dcl_dist.errors import DclDistError
from dcl_dist.rundir import RunDir

log = logging.getLogger(__name__)


class RunDirInUse(DclDistError):
    """Another dcl-dist run holds the run directory."""


@contextlib.contextmanager
def hold(run_dir: RunDir) -> Iterator[None]:
    """Hold the run directory's lock (rank 0) within the block; every rank stops with RunDirInUse if another run
    holds it. The run directory must exist."""
    fd, problem = None, None
    if dist.is_main():
        fd, problem = _acquire(run_dir)
    problem = dist.broadcast_object(problem)
    if problem is not None:
        raise RunDirInUse(problem)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock; the file stays, naming the last holder


def _acquire(run_dir: RunDir) -> tuple[int | None, str | None]:
    """(the locked file's descriptor, None) or (None, why the run directory is busy)."""
    path = run_dir.lock_file
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder, stop = _holder(fd)
        os.close(fd)
        return None, (
            f"run.dir {run_dir.root} is in use by another dcl-dist run ({holder}): wait for it to end, or stop it"
            f" ({stop} writes a checkpoint), or choose another run.dir"
        )
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        log.warning("%s: this filesystem has no locks, so a second run on run.dir is not refused (%s)", path, e)
        return fd, None
    info = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd, None


def _holder(fd: int) -> tuple[str, str]:
    """(who holds the lock, as its file says; how to stop it)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        holder = f"host {info['host']}, pid {info['pid']}, since {info['since']}: {info['command']}"
        return holder, f"kill -TERM {info['pid']} on {info['host']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "its details are not written yet", "kill -TERM <its pid>"
