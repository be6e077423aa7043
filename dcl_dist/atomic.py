"""Files and folders written whole or not at all: each is written under a temporary name beside its target and
renamed over it once complete, so a crash, a full disk or Ctrl-C leaves the earlier version (or nothing), never a
half-written file, and nothing the user had is truncated before the new result exists."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def open_for_writing(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` when the block ends without an error; on any error (or a signal) the
    temporary file is removed and `path` is as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """path.write_text(text), atomically."""
    with open_for_writing(path) as f:
        f.write(text)


@contextlib.contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A new folder to fill; when the block ends without an error it takes the place of `path` (whatever was
    there is moved aside first, and deleted only once the new folder is in place). On any error the new folder
    is removed and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    new, previous = work / "new", work / "previous"
    moved = False
    try:
        yield new
        if path.exists() or path.is_symlink():
            os.replace(path, previous)
            moved = True
        os.replace(new, path)
        moved = False
    except BaseException:
        if moved:
            os.replace(previous, path)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
