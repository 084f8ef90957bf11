"""The one exception type that reaches the user as a one-line message (exit code 2)."""


class UserError(Exception):
    """A problem with what the user gave us (a file, row, key or flag), not a bug.

    The message names the offending file/row/column/key/flag and what was expected.
    """


class TrainingDiverged(UserError):
    """A loss became NaN or infinite; nothing from the diverged model is written."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command (jax_impl.training.interrupts); a KeyboardInterrupt, so code that handles
    Ctrl-C handles it too. The message says what was saved and how to continue; exit code 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
