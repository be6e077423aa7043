"""Stop requests: SIGUSR1 (SLURM's warning before a time limit), SIGTERM (preemption, scancel) and SIGINT
(Ctrl-C) ask training to stop at the next step boundary, after a checkpoint. The loop reads the request at
each step boundary and the ranks agree on it there; a second Ctrl-C aborts without a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

from dcl_dist import dist
from dcl_dist.errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


def stopped(where: str) -> Interrupted:
    """The error every rank raises once a stop request has been honoured (after the checkpoint is complete)."""
    why = f"on {_received}" if _received else "on a stop request that another rank received"
    return Interrupted(f"stopped {why} {where}: run the same command again to resume")


_received: str | None = None


def requested() -> str | None:
    """The name of the first stop signal this process received, or None."""
    return _received


def _on_signal(signum: int, frame: object) -> None:
    global _received
    name = signal.Signals(signum).name
    if _received == "SIGINT" and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the checkpoint
    if _received is None:
        _received = name
        if dist.is_main():
            log.warning(
                "%s received: stopping after this step with a checkpoint (Ctrl-C again aborts without one)", name
            )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block the stop signals set the request instead of killing the process."""
    global _received
    _received = None
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received = None  # a request belongs to its block: code after it (or the next test) starts afresh


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: workers share the rank's process group, so a Ctrl-C or SLURM's signal reaches
    them too; they must outlive it until their rank has written its checkpoint and closes them."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
