"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE = 500  # characters: an error is one line a person reads, whatever value caused it


class PipelineError(Exception):
    """A problem the user can fix: bad params, a missing or corrupt input, an unwritable output.

    The message says what was wrong and, where there is one, the command or value that fixes it. It is
    kept to one line of at most ``MAX_MESSAGE`` characters, so a hostile value cannot flood a terminal.
    """

    def __init__(self, message: str):
        one_line = " ".join(str(message).split())
        super().__init__(one_line if len(one_line) <= MAX_MESSAGE else one_line[:MAX_MESSAGE - 1] + "…")


class Interrupted(PipelineError):
    """A stage cut short by something outside it (a worker of its multi-worker fit was lost): like
    Ctrl-C, its resume state is kept, so the same command resumes."""


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: how an error message quotes a value it was given."""
    return clip(repr(value), limit)
