"""Exit codes of every ``teacher`` command, defined once (torch-free: the supervisor, which must
not import torch, reads the training child's code against the same table).

Documented for users in README.md ("Exit codes") and docs/run-directory.md.
"""
from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1      # the command (a training run, an analysis verdict, a request) failed
    BAD_INPUT = 2   # invalid input or usage: a config, a path, a flag, a 4xx from the API
    STOPPED = 3     # `teacher train` stopped because it was asked to (SIGTERM, cancel); resumable
    NO_SPACE = 4    # `teacher train` could not write: no space left on the run's volume


# The historical names, kept so that call sites read like the documentation.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED, EXIT_NO_SPACE = (
    ExitCode.OK, ExitCode.FAILED, ExitCode.BAD_INPUT, ExitCode.STOPPED, ExitCode.NO_SPACE)
EXIT_USAGE = ExitCode.BAD_INPUT

# An OSError with one of these errnos means the volume is full (EDQUOT: a quota): NO_SPACE.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
