"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix: bad params, a missing or corrupt input, an unwritable output.

    The message says what was wrong and, where there is one, the command or value that fixes it.
    """
