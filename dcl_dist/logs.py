"""What the console shows: one log format that names the rank, rank 0 at INFO and the others at WARNING, and
each library warning at most once, or not at all where it says nothing a user can act on.

Set once per process by `setup` (the CLI calls it first thing, so every rank a launcher starts runs it, before
deepspeed or transformers is imported). Nothing here edits a library: Python's warnings filters, one
warnings.showwarning that remembers what it showed, and logging filters on the libraries' own loggers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator

SILENCED_WARNINGS: list[tuple[type[Warning], str]] = [
    # DeepSpeed's ZeRO stages call these torch.distributed functions (measured: 60 warnings in a two-rank run of
    # 12 steps, each stage's every bucket); the fix is DeepSpeed's, nothing for a user to change
    (FutureWarning, r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"),
    # dist.all_gather_with_grad uses torch.distributed.nn.functional.all_gather, whose replacement does not carry
    # the gradient the same way yet: ours to change, not the user's
    (FutureWarning, r"torch\.distributed\.nn\.functional\.all_gather is deprecated"),
]
"""(category, message regex) of Python warnings never shown."""

SILENCED_RECORDS: dict[str, list[str]] = {
    # printed by every rank at every start on a machine without GPU; train logs the device it runs on instead
    "DeepSpeed": [r"Setting accelerator to CPU"],
}
"""Library logger -> message regexes of records never shown."""

QUIET_LOGGERS = (
    "DeepSpeed",
    "deepspeed",
    "torch.distributed",
    "datasets",
    "httpx",
    "urllib3",
    "filelock",
    "tensorboard",  # its event reader (the report) logs every file it moves to
)
"""Libraries whose INFO records describe their own internals: WARNING and above only."""

WARNINGS_LOGGER = "py.warnings"

log = logging.getLogger("dcl_dist")


def rank_from_env() -> int:
    """This process's rank, from the launcher's environment (before or after the process group exists)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup(rank: int | None = None) -> None:
    """The log format and levels, and the library warnings shown once each (on rank 0; other ranks see the same)."""
    rank = rank_from_env() if rank is None else rank
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, patterns in SILENCED_RECORDS.items():
        # a filter on the logger object itself: DeepSpeed resets its level and handlers when it is imported
        _add_once(logging.getLogger(name), _Drop(patterns))
    quiet_warnings(rank)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet_warnings(rank: int) -> None:
    """Silenced warnings never shown, every other one once per process as a log record; on rank 0 only."""
    for category, pattern in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    if not isinstance(warnings.showwarning, _ShowOnce):
        # a library may reset a module's warning registry (any change to the filters does), after which Python
        # shows the same warning again: this remembers what it showed, whatever the registries say
        warnings.showwarning = _ShowOnce(rank == 0)


class _ShowOnce:
    """warnings.showwarning that logs each (category, message) once and drops it on ranks other than 0."""

    def __init__(self, show: bool):
        self.show = show
        self.seen: set[tuple[type, str]] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
        key = (category, str(message))
        if not self.show or key in self.seen:
            return
        self.seen.add(key)
        where = f"{os.path.basename(filename)}:{lineno}"
        logging.getLogger(WARNINGS_LOGGER).warning("%s: %s (%s)", category.__name__, message, where)


class _Drop(logging.Filter):
    """Drops records whose message matches one of `patterns`."""

    def __init__(self, patterns: list[str]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _add_once(logger: logging.Logger, new: logging.Filter) -> None:
    if not any(type(f) is type(new) for f in logger.filters):
        logger.addFilter(new)


def quiet_transformers() -> None:
    """transformers' own warnings and progress bars off (it logs through its own handler)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def library_output_silenced() -> Iterator[None]:
    """Within the block, what a library prints to stdout and stderr is dropped (exceptions still propagate).

    For DeepSpeed's ZeRO-3 weights-only load, which prints its checkpoint parsing and two progress bars on every
    rank ("Processing zero checkpoint ...", "Gathering sharded weights").
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def log_device() -> None:
    """One line on rank 0 that says what the run computes on (instead of DeepSpeed's warning at every start)."""
    import torch

    if torch.cuda.is_available():
        log.info("device: %d GPU(s) visible (%s)", torch.cuda.device_count(), torch.cuda.get_device_name(0))
    else:
        log.info("device: CPU (torch sees no GPU: torch.cuda.is_available() is False)")
