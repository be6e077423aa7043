"""`dcl-dist` with one injected fault, for tests of what a crash leaves behind.

DCL_STALL_AT_STEP=N: rank 0 stalls in the save of checkpoint step N as far as it gets before the checkpoint becomes
visible (every rank's shards and complete.json written, the folder not yet renamed), after touching $DCL_FAULT_MARKER.
DCL_RAISE_AT_MICRO_BATCH=N: the loop raises on its N-th micro-batch.
DCL_DISK_FULL_AT_STEP=N: every file write of checkpoint step N fails as on a full disk (ENOSPC).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from dcl_dist import checkpoints, cli, loop

if "DCL_STALL_AT_STEP" in os.environ:
    _fsync_dir = checkpoints._fsync_dir
    _stall_at = f"{checkpoints.PARTIAL_PREFIX}{checkpoints.CHECKPOINT_PREFIX}{int(os.environ['DCL_STALL_AT_STEP']):08d}"

    def _stalling_fsync_dir(path: Path) -> None:
        if path.name == _stall_at:
            Path(os.environ["DCL_FAULT_MARKER"]).touch()
            time.sleep(600)
        _fsync_dir(path)

    checkpoints._fsync_dir = _stalling_fsync_dir

if "DCL_RAISE_AT_MICRO_BATCH" in os.environ:
    _to_device = loop.to_device
    _micro_batches = 0

    def _failing_to_device(batch: dict, device):
        global _micro_batches
        _micro_batches += 1
        if _micro_batches == int(os.environ["DCL_RAISE_AT_MICRO_BATCH"]):
            raise RuntimeError("injected fault")
        return _to_device(batch, device)

    loop.to_device = _failing_to_device

if "DCL_DISK_FULL_AT_STEP" in os.environ:
    import errno

    import torch

    _save = torch.save
    _full_at = f"{checkpoints.CHECKPOINT_PREFIX}{int(os.environ['DCL_DISK_FULL_AT_STEP']):08d}"

    def _full_disk_save(obj, f, *args, **kwargs):
        if _full_at in str(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return _save(obj, f, *args, **kwargs)

    torch.save = _full_disk_save

if __name__ == "__main__":
    sys.exit(cli.main())
