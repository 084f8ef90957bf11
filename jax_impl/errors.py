"""The one exception type that reaches the user as a one-line message (exit code 2)."""


class UserError(Exception):
    """A problem with what the user gave us (a file, row, key or flag), not a bug.

    The message names the offending file/row/column/key/flag and what was expected.
    """


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; nothing from the diverged model is written."""
