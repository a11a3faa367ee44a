"""The exceptions users see: their message is printed as one line by the command line."""


class CalbatchError(Exception):
    """Bad input, a missing dependency or a failed external step; the message names the file,
    field or value. The command exits with ``exit_code`` (2)."""

    exit_code = 2


class InvalidResult(CalbatchError):
    """The run finished and its result was printed, but the result is not valid (a Fick solve that
    did not converge); the command exits with 3 unless told to accept it."""

    exit_code = 3
