"""Errors a user can fix. The CLI prints them as one line (never a traceback)."""
from __future__ import annotations


class _OneLine(Exception):
    """An error whose message is one line: text quoted from a library (OpenCV, Pillow) may span
    several, and the command line, the render server and the add-on show exactly one."""

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(part.strip() for part in str(message).splitlines() if part.strip()))


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (its type's name when it has none): what a one-line
    error quotes of a library's message."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class InputError(_OneLine):
    """Bad or missing input: the message names the file and the fix."""


class DeviceError(_OneLine):
    """The requested compute device is not available."""
