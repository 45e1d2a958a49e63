"""The one error type that user input raises."""


class InputError(ValueError):
    """Bad user input: the message is one line naming the problem (the CLI exits with 2)."""
