"""Errors that reach the user as one line and a non-zero exit code."""


class PaysimError(Exception):
    """An expected failure: its message is the whole story the user needs."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        # Extra lines shown under the one-line message, such as the tail of a log.
        self.details = details or []


class ConfigError(PaysimError):
    """A setting from a flag, the environment or the config file is invalid."""

    exit_code = 2


class MissingPrerequisite(PaysimError):
    """A program paysim needs (java, mvn, redis-server) is absent or too old."""

    exit_code = 3
