"""One exception type for every mistake a user can make.

The CLIs catch `UserError` and print its one-line message (exit code 2) instead of a
traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad input: the message names what and where, and what was expected."""


class DataError(UserError):
    """A dataset on disk does not match its feature_spec.yaml (or holds bad ids)."""


class ConfigError(UserError):
    """A config file, profile or override is wrong: unknown key, bad type, bad value."""
