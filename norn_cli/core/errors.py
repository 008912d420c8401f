"""Exit codes and the NornError tree: each error knows its code and its one-line message."""

from __future__ import annotations

import enum

__all__ = [
    "ExitCode",
    "NornError",
    "OperationFailed",
    "ConfigError",
    "HubUnreachable",
    "Unauthorized",
    "TimedOut",
    "EventError",
]


class ExitCode(enum.IntEnum):
    """The documented exit codes of every `norn` command."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    UNAUTHORIZED = 4
    TIMEOUT = 5
    INTERRUPTED = 130


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success (deploy: the pipeline completed)",
    ExitCode.FAILED: "the operation failed (a step failed, the hub refused)",
    ExitCode.USAGE: "usage error (bad flag, bad config)",
    ExitCode.UNREACHABLE: "could not reach or stay connected to the hub",
    ExitCode.UNAUTHORIZED: "not authorised",
    ExitCode.TIMEOUT: "timed out waiting (--timeout)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class NornError(Exception):
    """A failure meant for a person: one sentence, one exit code."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class OperationFailed(NornError):
    """The hub refused a request, or a run failed."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, *, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(NornError):
    """A bad setting or configuration file."""

    exit_code = ExitCode.USAGE


class HubUnreachable(NornError):
    """The hub could not be reached, or the connection was lost; `reason` is the why alone
    (`connection refused`), for callers that name the hub themselves."""

    exit_code = ExitCode.UNREACHABLE

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


class Unauthorized(NornError):
    """The hub refused our credentials."""

    exit_code = ExitCode.UNAUTHORIZED


class TimedOut(NornError):
    """Nothing satisfying arrived before the deadline."""

    exit_code = ExitCode.TIMEOUT


class EventError(NornError):
    """An event that breaks the envelope or the catalogue."""

    exit_code = ExitCode.USAGE
