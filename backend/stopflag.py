"""Requested stops: SIGINT/SIGTERM become a flag that long loops check, so they save first."""
from __future__ import annotations

import signal
import threading


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks, so the run saves before exiting."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            # SIGBREAK: what a Windows console parent (Blender's Stop) can send.
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.stop = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)
