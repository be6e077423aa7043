"""`dcl-dist` whose checkpoint save stalls, for a test to kill the run in the middle of it.

Rank 0 stalls when the save of checkpoint step $DCL_STALL_AT_STEP is as far as it gets before becoming visible:
every rank's shards and complete.json written, the folder not yet renamed. It touches $DCL_STALL_MARKER then.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dcl_dist import cli
from dcl_dist import engine as ds

_fsync_dir = ds._fsync_dir
_stall_at = f"{ds.PARTIAL_PREFIX}{ds.CHECKPOINT_PREFIX}{int(os.environ['DCL_STALL_AT_STEP']):08d}"


def _stalling_fsync_dir(path: Path) -> None:
    if path.name == _stall_at:
        Path(os.environ["DCL_STALL_MARKER"]).touch()
        time.sleep(600)
    _fsync_dir(path)


ds._fsync_dir = _stalling_fsync_dir

if __name__ == "__main__":
    sys.exit(cli.main())
