"""The base of every user-facing error. Each module raises its own subclass for its own values
(ConfigError, SharingError, DataError, CheckpointError, ...); ``spin`` on the command line prints
any of them as one ``spin: error: ...`` line per problem and exits with status 2."""


class SpinError(Exception):
    """A bad input: the message names the problem and the fix."""
