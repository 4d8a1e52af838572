"""Errors a user can fix.

`UserError` sits in the lowest package so every layer can raise it; the CLI prints its message
as one line (or one line per problem) and exits with code 2, never a traceback.
"""


class UserError(Exception):
    """A mistake in the user's input: bad file, bad field, unknown model, unreachable server."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


class RunFailed(UserError):
    """The command ran, but nothing it was asked to make was made (every task of a stage failed)."""

    exit_code = 1
