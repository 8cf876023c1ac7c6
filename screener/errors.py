"""Typed exceptions. Each carries the process exit code the CLI returns for it, so cron can tell them apart."""

import signal


class ScreenerError(Exception):
    """Base class. The message says what was expected, what was found and what to do."""

    exit_code = 1


class ConfigError(ScreenerError):
    exit_code = 2


class ReviewError(ScreenerError):
    """A decision that names an unknown user or action, or a snooze date that cannot apply; nothing was written."""

    exit_code = 2


class InputError(ScreenerError):
    """The archive is missing, unreadable or does not have the expected table, columns or types."""

    exit_code = 3


class AlreadyRunningError(ScreenerError):
    """Another process holds the results database open for writing."""

    exit_code = 4


class ModelError(ScreenerError):
    """The model could not be found or loaded."""

    exit_code = 5


class SchemaError(ScreenerError):
    """The results database carries a schema version this release does not know."""

    exit_code = 6


class StorageError(ScreenerError):
    """Writing results failed (disk full, I/O error); earlier results are intact."""

    exit_code = 7


class StaleSourceError(ScreenerError):
    """The archive's newest message is older than ``freshness_error_hours``: the export feeding it has probably
    stopped. The scan itself completed and its results are stored."""

    exit_code = 8


class Interrupted(ScreenerError):
    """SIGINT or SIGTERM stopped the command; a scan's committed windows are kept and the next scan resumes after
    them. The exit code is the shell's for death by that signal, 128 + its number: 130 for SIGINT, 143 for
    SIGTERM."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(message or f"stopped by {name}: the scan's committed windows are kept and the next scan "
                                    "resumes after them")
