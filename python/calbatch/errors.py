"""The one exception type users see: its message is printed as one line by the CLI."""


class CalbatchError(Exception):
    """Bad input or a failed external step; the message names the file, field or value."""
