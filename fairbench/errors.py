"""The project's one error type for expected failures (bad input, missing data, ...)."""


class FairbenchError(Exception):
    """An expected failure with a message that says what to do; the CLI prints it in one line."""
