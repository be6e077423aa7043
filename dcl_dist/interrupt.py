"""Stop requests: SIGUSR1 (SLURM's warning before a time limit), SIGTERM (preemption, scancel) and SIGINT (Ctrl-C).

Where there is training to keep, a request is answered at the next step boundary with a checkpoint: the loop reads
it there and the ranks agree on it in the step's one reduction; an evaluation in progress reads it between batches
(ranks agree there too, as ZeRO-3 runs collectives in every forward pass), so a stop never waits for a whole
validation set. Where there is nothing to keep (loading data or a model on one rank; predict, evaluate and
export), the request stops the command at once: the handler raises StopNow, and every file is written whole or
not at all (atomic.py), so nothing half-written stays. A second Ctrl-C aborts without a checkpoint
(KeyboardInterrupt). The command line turns each of these into one line and an exit status.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

from dcl_dist.errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class StopNow(BaseException):
    """Raised by the signal handler where nothing is worth a checkpoint: a BaseException, so that a library's
    `except Exception` on the way up cannot swallow it (KeyboardInterrupt is one for the same reason)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class EvaluationStopped(Interrupted):
    """Every rank stopped an evaluation between two batches on a stop request (the loop catches it mid-training)."""


_received: str | None = None
_installed = False
_at_once = False
"""True where a request stops the process at once (StopNow); False where the loop or an agreed check answers it."""


def stopped(where: str) -> Interrupted:
    """The error every rank raises once a stop request has been honoured (after the checkpoint is complete)."""
    why = f"on {_received}" if _received else "on a stop request that another rank received"
    return Interrupted(f"stopped {why} {where}: run the same command again to resume")


def requested() -> str | None:
    """The name of the first stop signal this process received, or None."""
    return _received


def check_between_batches() -> None:
    """Where every rank stands between two evaluation batches: EvaluationStopped on every rank if any has a
    request (one reduction across ranks, and only while the stop signals are ours)."""
    from dcl_dist import dist  # here: the command line installs the handlers before torch is imported

    if _installed and dist.any_true(_received is not None):
        why = f"on {_received}" if _received else "on a stop request that another rank received"
        raise EvaluationStopped(f"stopped {why} during an evaluation: run the same command again to resume")


def _on_signal(signum: int, frame: object) -> None:
    global _received
    name = signal.Signals(signum).name
    if _received == "SIGINT" and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the checkpoint
    if _received is None:
        _received = name
        if _at_once:
            raise StopNow(name)
        from dcl_dist import dist

        if dist.is_main():
            log.warning(
                "%s received: stopping after this step with a checkpoint (Ctrl-C again aborts without one)", name
            )


@contextlib.contextmanager
def stop_on_signals(at_once: bool = False) -> Iterator[None]:
    """Within this block the stop signals set the request instead of killing the process.

    at_once: outside the training loop a request raises StopNow right away (one process: no other rank can be left
    waiting in a collective); the loop's block (answered) switches that off while it can answer with a checkpoint.
    """
    global _received, _installed, _at_once
    _received, _installed, _at_once = None, True, at_once
    previous = {s: signal.signal(s, _on_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received, _installed, _at_once = None, False, False  # a request belongs to its block


def set_at_once(at_once: bool) -> None:
    """Whether a request outside the training loop stops the process at once: yes on one rank; on many, no (a rank
    that left would strand the others in a collective), so there the next agreed check answers it."""
    global _at_once
    _at_once = at_once


@contextlib.contextmanager
def answered_with_a_checkpoint() -> Iterator[None]:
    """Within this block (the training loop) a request waits for the next step boundary, where the loop writes a
    checkpoint; a request still unanswered when the block ends stops the process at once if it would have."""
    global _at_once
    before = _at_once
    _at_once = False
    try:
        yield
    finally:
        _at_once = before
    if before and _received is not None:
        raise StopNow(_received)


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: workers share the rank's process group, so a Ctrl-C or SLURM's signal reaches
    them too; they must outlive it until their rank has written its checkpoint and closes them."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
