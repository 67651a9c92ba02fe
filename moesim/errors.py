"""Errors a user can cause. The CLI turns each into one line and exit code 2."""


class MoesimError(ValueError):
    """Bad input: a malformed spec, an unknown preset, an impossible configuration.

    The message is one line that names the field and what is allowed.
    """


class DeadlockError(RuntimeError):
    """The plan cannot finish: every remaining task waits on something that will never happen.

    On a real cluster this plan would hang. The message names the blocked tasks and what each waits for.
    """
