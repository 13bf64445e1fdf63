"""Errors a user can fix. The CLI prints them as one line (never a traceback)."""


class InputError(Exception):
    """Bad or missing input: the message names the file and the fix."""


class DeviceError(Exception):
    """The requested compute device is not available."""
