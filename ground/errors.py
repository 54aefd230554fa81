"""One exception base for the project.

User-facing errors (bad input, bad config, missing secret) derive from :class:`CohortError`; the
CLI prints their message without a traceback and exits non-zero. Internal bugs are any other
exception and keep their traceback.
"""


class CohortError(Exception):
    """An error the user can fix: the message says what is wrong, where, and what to do."""

    exit_code = 2


class InputDataError(CohortError):
    """A delivered extract is unusable (missing column, wrong file, unreadable bytes, ...)."""


class ConfigError(CohortError):
    """A configuration, scenario or settings file is invalid."""


class SecretError(CohortError):
    """A required secret (e.g. the pseudonymisation key) is missing."""


class RunStateError(CohortError):
    """The run folder is in a state that forbids the requested action (locked, incomplete)."""
