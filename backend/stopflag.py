"""Requested stops: SIGINT/SIGTERM/SIGHUP (and a lost reader of the events, see backend.events) become
a flag that long loops check between units of work, so they save before exiting.

One flag per process: nested `StopFlag` blocks (fit -> cache, then fit -> train) share it, so a
stop that arrives between two phases is seen by the next one. It is cleared when the outermost
block ends (a library caller can run the next job in the same process)."""
from __future__ import annotations

import signal
import threading

_requested = False
_depth = 0
_old_handlers: dict = {}


def request_stop() -> None:
    """Ask the running job to stop at its next check (as SIGTERM does)."""
    global _requested
    _requested = True


def stop_requested() -> bool:
    return _requested


class StopFlag:
    """Within the block SIGINT/SIGTERM/SIGHUP set the process's stop flag instead of ending it;
    `flag.stop` is true once a stop was requested."""

    @property
    def stop(self) -> bool:
        return _requested

    def __enter__(self):
        global _depth
        if _depth == 0 and threading.current_thread() is threading.main_thread():
            # SIGBREAK: what a Windows console parent (Blender's Stop) can send; SIGHUP: the terminal
            # was closed (POSIX only).
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None),
                        getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    _old_handlers[sig] = signal.signal(sig, _handle)
        _depth += 1
        return self

    def __exit__(self, *exc):
        global _depth, _requested
        _depth -= 1
        if _depth == 0:
            for sig, h in _old_handlers.items():
                signal.signal(sig, h)
            _old_handlers.clear()
            _requested = False


def _handle(signum, frame):
    request_stop()
