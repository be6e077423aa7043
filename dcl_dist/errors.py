"""Everything a user can cause or fix ends in one of these: the message names the key, file or line and the fix.

The command line catches DclDistError alone and exits with the error's `exit_code`; any other exception is a
bug in dcl_dist (or a library) and keeps its traceback.
"""

from __future__ import annotations


class DclDistError(Exception):
    """A problem the user can fix (bad input, a damaged file, a full disk) or a run stopped on request."""

    exit_code = 2
    """Exit status of the command line: 2 bad input, 3 training stopped, 75 stopped on request (run it again)."""
    label = "error"
    """How the command line introduces the message ("dcl-dist: error: ...")."""


class ConfigError(DclDistError, ValueError):
    """One or more configuration problems, each naming the key, where it was set and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        head = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(f"invalid configuration ({head}):\n" + "\n".join(f"  - {p}" for p in problems))


class DataError(DclDistError, ValueError):
    """A data source cannot be used as asked: the message names the file (and line) or hub name and the fix."""


class ModelError(DclDistError, ValueError):
    """A model folder, artifact or adapter cannot be used as asked: the message names the folder and the fix."""


class TrainingError(DclDistError, RuntimeError):
    """Training cannot go on (out of memory, a NaN loss, a checkpoint that cannot be written): the message names
    the step, what was kept and what to change."""

    exit_code = 3
    label = "training stopped"


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


class Interrupted(DclDistError):
    """Training stopped on a stop request (SIGINT, SIGTERM, SIGUSR1); every rank raises it after its checkpoint."""

    exit_code = 75  # EX_TEMPFAIL: run the same command again to resume
    label = ""  # the message says "stopped on SIGTERM ..." itself
