"""Errors that stop the server before (or instead of) serving: one line for the user each."""

from __future__ import annotations


class StartupError(Exception):
    """Reported as a single line; the process exits with ``exit_code``."""

    exit_code = 1


class ConfigError(StartupError, ValueError):
    """A configuration value that cannot work."""


class AppImportError(StartupError):
    """The app could not be loaded."""


class ListenError(StartupError):
    """A listening socket could not be created."""


class LifespanFailure(StartupError):
    """The app reported (or raised during) lifespan startup failure."""

    exit_code = 3


class CommandFailed(Exception):
    """A control-socket command that could not be done: its one line goes back to the
    client (and into the log), without a traceback."""
